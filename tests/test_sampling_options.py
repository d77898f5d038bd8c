"""The one check of the sampling options (attnkit/generate/options.py): through `attnkit sample`,
each bad value is one documented line before anything is loaded; the same function names the
options the server's way and the Python API's way (the server's 400s: test_serve_limits.py)."""

from __future__ import annotations

import math

import pytest
import test_cli
from test_cli import cli
from test_errors import refused

import attnkit
from attnkit.errors import AttnkitError
from attnkit.generate.options import API, CLI, PYTHON, SEED_MAX, OptionError, check_sampling

trained_run = test_cli.trained_run  # a fixture shared with test_cli

BAD = [  # (id, argv, words the one error line must hold)
    ("nan temperature", ["--temperature", "nan"], "--temperature must be a finite number, got nan"),
    ("inf temperature", ["--temperature", "inf"], "--temperature must be a finite number, got inf"),
    ("negative temperature", ["--temperature", "-1"],
     "--temperature must be 0 (greedy) or positive, got -1.0"),
    ("zero top-k", ["--top-k", "0"], "--top-k must be at least 1, got 0 (leave it out"),
    ("negative top-k", ["--top-k", "-5"], "--top-k must be at least 1, got -5"),
    ("nan top-p", ["--top-p", "nan"], "--top-p must be a finite number, got nan"),
    ("zero top-p", ["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    ("top-p above one", ["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    ("nan min-p", ["--min-p", "nan"], "--min-p must be a finite number, got nan"),
    ("min-p above one", ["--min-p", "2"], "--min-p must be in [0, 1], got 2.0"),
    ("nan repetition penalty", ["--repetition-penalty", "nan"],
     "--repetition-penalty must be a finite number, got nan"),
    ("inf repetition penalty", ["--repetition-penalty", "inf"],
     "--repetition-penalty must be a finite number, got inf"),
    ("zero repetition penalty", ["--repetition-penalty", "0"],
     "--repetition-penalty must be positive (1 is off), got 0.0"),
    ("negative no-repeat-ngram", ["--no-repeat-ngram", "-1"],
     "--no-repeat-ngram must be 0 (off) or more, got -1"),
    ("zero samples", ["--num-samples", "0"], "--num-samples must be at least 1, got 0"),
    ("negative samples", ["--num-samples", "-2"], "--num-samples must be at least 1, got -2"),
    ("seed over 64 bits", ["--seed", str(2**64)],
     f"--seed must be between 0 and 2**64-1 = {SEED_MAX}, got {2**64}"),
    ("huge seed", ["--seed", str(2**70)], "--seed must be between 0 and 2**64-1"),
    ("negative seed", ["--seed", "-1"], "--seed must be between 0 and 2**64-1"),
    ("seeds run past 64 bits", ["--seed", str(SEED_MAX), "--num-samples", "2"],
     "--seed plus --num-samples 2 must stay within 2**64-1"),
    ("negative max-new-tokens", ["--max-new-tokens", "-1"],
     "--max-new-tokens must be 0 or more, got -1"),
    ("empty stop", ["--stop", "\n", "--stop", ""], "--stop must not be empty"),
]


@pytest.mark.parametrize("argv, words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_sampling_option_is_one_documented_line(trained_run, capsys, argv, words):
    refused(cli(capsys, "sample", trained_run, "--prompt", "The ", *argv), words)


def test_options_are_checked_before_the_run_is_loaded(env, capsys):
    refused(cli(capsys, "sample", "missing", "--top-k", "0"), "--top-k must be at least 1")


@pytest.mark.parametrize("argv", [
    ["--seed", str(SEED_MAX)], ["--seed", "0"], ["--seed", str(SEED_MAX - 1), "--num-samples", "2"],
    ["--top-k", "1", "--top-p", "1", "--min-p", "0", "--no-repeat-ngram", "0",
     "--repetition-penalty", "1", "--temperature", "0", "--max-new-tokens", "0"],
], ids=["largest seed", "seed 0", "last two seeds", "every edge of a range"])
def test_the_edges_of_each_range_are_accepted(trained_run, capsys, argv):
    rc, out, err = cli(capsys, "sample", trained_run, "--prompt", "The ", "--max-new-tokens", "3",
                       *argv)
    assert rc == 0, err
    assert out.count("The ") == (2 if "--num-samples" in argv else 1)


def test_one_function_names_the_option_the_way_each_caller_spells_it():
    for names, message, option in [
        (CLI, "--top-k must be at least 1, got 0 (leave it out for no top-k)", "--top-k"),
        (API, "'top_k' must be at least 1, got 0 (leave it out for no top-k)", "top_k"),
        (PYTHON, "top_k must be at least 1, got 0 (leave it out for no top-k)", "top_k"),
    ]:
        with pytest.raises(OptionError) as e:
            check_sampling(temperature=1.0, top_k=0, names=names)
        assert str(e.value) == message and e.value.option == option
        assert isinstance(e.value, AttnkitError)
    with pytest.raises(OptionError) as e:
        check_sampling(max_new_tokens=17, max_new_tokens_limit=16, names=API)
    assert e.value.option == "max_tokens" and "'max_tokens' must be between 0 and 16" in str(e.value)
    with pytest.raises(OptionError, match="'temperature' must be between 0 and 2, got 2.5"):
        check_sampling(temperature=2.5, max_temperature=2, names=API)
    check_sampling(temperature=2.5)  # the command line has no upper limit
    check_sampling()  # nothing given, nothing checked


def test_the_python_api_refuses_nan_rules_through_the_same_check(trained_run):
    run = attnkit.load(trained_run, device="cpu")
    for kwargs, words in [({"min_p": math.nan}, "min_p must be a finite number"),
                          ({"repetition_penalty": math.inf}, "repetition_penalty must be a finite"),
                          ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be 0 (off)")]:
        with pytest.raises(AttnkitError, match=words.replace("(", r"\(").replace(")", r"\)")):
            attnkit.generate(run.model, "The ", 3, tokenizer=run.tokenizer, **kwargs)
