"""min-p, repetition penalty, no-repeat n-grams, stop strings, finish reasons, batched prompts
and the matching `attnkit sample` flags."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import cli

import attnkit
from attnkit.config import ModelConfig
from attnkit.errors import AttnkitError
from attnkit.generate import (
    Chunk,
    generate_batch,
    generate_batch_ids,
    generate_ids,
    min_p_filter,
    no_repeat_ngram,
    repetition_penalty,
    sample,
    stream,
    top_k_filter,
    top_p_filter,
)
from attnkit.models import Decoder
from attnkit.models.contract import Abilities
from attnkit.nn import OutputHead
from attnkit.tokenizers import CharTokenizer

INF = float("-inf")


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


# ------------------------------------------------------------------ min-p


def test_min_p_hand_computed():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    # threshold 0.2 * 0.5 = 0.1: 0.5, 0.3 and 0.15 stay
    assert kept(min_p_filter(logits, 0.2)) == [0, 1, 2]
    # threshold 0.6 * 0.5 = 0.3: 0.3 is exactly on it and stays
    assert kept(min_p_filter(logits, 0.6)) == [0, 1]
    assert kept(min_p_filter(logits, 1.0)) == [0]
    out = min_p_filter(logits, 0.2)
    torch.testing.assert_close(out[:3], logits[:3])  # survivors unchanged


@pytest.mark.parametrize("p", [None, 0, 0.0])
def test_min_p_no_op(p):
    logits = torch.tensor([1.0, -3.0, 2.0])
    assert torch.equal(min_p_filter(logits, p), logits)


def test_min_p_per_row_and_rejects_above_one():
    logits = torch.tensor([[0.0, 0.0, -10.0], [5.0, 0.0, 0.0]])
    assert min_p_filter(logits, 0.5).isfinite().tolist() == [[True, True, False],
                                                             [True, False, False]]
    with pytest.raises(ValueError):
        min_p_filter(logits, 1.5)


def test_sample_with_min_p_one_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 1.9], [3.0, 2.9, -1.0]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert sample(logits, temperature=2.0, min_p=1.0, generator=g).tolist() == [1, 0]


# ------------------------------------------------------------------ repetition penalty


def test_repetition_penalty_hand_computed():
    logits = torch.tensor([2.0, -1.0, 3.0, -4.0, 0.5])
    out = repetition_penalty(logits, [0, 1, 1, 3], 2.0)
    assert out.tolist() == [1.0, -2.0, 3.0, -8.0, 0.5]
    assert logits.tolist() == [2.0, -1.0, 3.0, -4.0, 0.5]  # the input is untouched


def test_repetition_penalty_per_row_and_no_op():
    logits = torch.tensor([[2.0, 2.0], [2.0, 2.0]])
    out = repetition_penalty(logits, [[0], [1]], 4.0)
    assert out.tolist() == [[0.5, 2.0], [2.0, 0.5]]
    assert repetition_penalty(logits, torch.tensor([[0], [1]]), 4.0).tolist() == out.tolist()
    assert torch.equal(repetition_penalty(logits, [0, 1], 1.0), logits)
    assert torch.equal(repetition_penalty(logits, [0, 1], None), logits)
    assert torch.equal(repetition_penalty(logits, [], 3.0), logits)
    with pytest.raises(ValueError):
        repetition_penalty(logits, [[0]], 2.0)  # one list for two rows


# ------------------------------------------------------------------ no-repeat n-gram


def test_no_repeat_ngram_hand_computed():
    logits = torch.zeros(6)
    # bigrams seen: (1,2) (2,3) (3,1) (1,2) (2,4) (4,1); the last id is 1, so 2 is banned
    assert kept(no_repeat_ngram(logits, [1, 2, 3, 1, 2, 4, 1], 2)) == [0, 1, 3, 4, 5]
    # trigrams seen after (4, 1)? none: nothing banned
    assert kept(no_repeat_ngram(logits, [1, 2, 3, 1, 2, 4, 1], 3)) == [0, 1, 2, 3, 4, 5]
    # prefix (1, 2) was followed by 3 and by 4
    assert kept(no_repeat_ngram(logits, [1, 2, 3, 1, 2, 4, 1, 2], 3)) == [0, 1, 2, 5]
    # n = 1: every token already seen is banned
    assert kept(no_repeat_ngram(logits, [0, 5, 5], 1)) == [1, 2, 3, 4]


def test_no_repeat_ngram_no_op_and_short_history():
    logits = torch.randn(2, 5)
    assert torch.equal(no_repeat_ngram(logits, [1, 2, 1], 0), logits)
    assert torch.equal(no_repeat_ngram(logits, [1, 2, 1], None), logits)
    assert torch.equal(no_repeat_ngram(logits, [1, 2], 3), logits)


def test_no_repeat_ngram_per_row():
    logits = torch.zeros(2, 4)
    out = no_repeat_ngram(logits, [[0, 1, 0], [2, 3, 2]], 2)
    assert out.isfinite().tolist() == [[True, False, True, True], [True, True, True, False]]


def test_no_repeat_ngram_never_bans_everything():
    logits = torch.tensor([1.0, 2.0])
    assert torch.equal(no_repeat_ngram(logits, [0, 1], 1), logits)


# ------------------------------------------------------------------ properties


finite = st.floats(min_value=-30, max_value=30, allow_nan=False)
rows = st.lists(st.one_of(finite, st.just(INF)), min_size=2, max_size=12).filter(
    lambda xs: any(math.isfinite(x) for x in xs))


@settings(max_examples=150, deadline=None)
@given(values=rows, top_k=st.one_of(st.none(), st.integers(0, 14)),
       top_p=st.one_of(st.none(), st.floats(0.01, 1.0)),
       min_p=st.one_of(st.none(), st.floats(0.0, 1.0)),
       penalty=st.one_of(st.none(), st.floats(0.5, 3.0)),
       ngram=st.one_of(st.none(), st.integers(0, 3)),
       history=st.lists(st.integers(0, 11), max_size=10),
       temperature=st.floats(0.1, 5.0), seed=st.integers(0, 2**16))
def test_rules_never_leave_only_minus_inf_and_sample_is_valid(values, top_k, top_p, min_p, penalty,
                                                              ngram, history, temperature, seed):
    logits = torch.tensor([values])
    history = [h for h in history if h < len(values)]
    for rule in (lambda x: min_p_filter(x, min_p), lambda x: top_k_filter(x, top_k),
                 lambda x: top_p_filter(x, top_p), lambda x: repetition_penalty(x, history, penalty),
                 lambda x: no_repeat_ngram(x, history, ngram)):
        assert torch.isfinite(rule(logits)).any()
    shaped = no_repeat_ngram(repetition_penalty(logits, history, penalty), history, ngram)
    g = torch.Generator().manual_seed(seed)
    token = int(sample(shaped, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                       generator=g)[0])
    assert 0 <= token < len(values)
    assert math.isfinite(shaped[0, token])
    assert (shaped / temperature).softmax(-1)[0, token] > 0


# ------------------------------------------------------------------ generation


CHARS = list("abcdefgh \n")


def tiny_decoder(pos: str = "learned", context_length: int = 32) -> Decoder:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(CHARS), context_length=context_length, d_model=32,
                      n_layers=2, n_heads=2, pos=pos, init_std=0.5)
    return Decoder(cfg).eval()


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer(CHARS)


@pytest.fixture(scope="module")
def model() -> Decoder:
    return tiny_decoder()


def test_no_repeat_ngram_in_generation(model, tok):
    prompt = tok.encode("ab")
    plain = list(generate_ids(model, prompt, 20, temperature=0))
    assert len(set(zip(plain, plain[1:]))) < len(plain) - 1  # greedy repeats bigrams here
    ids = prompt + list(generate_ids(model, prompt, 20, temperature=0, no_repeat_ngram_size=2))
    bigrams = list(zip(ids, ids[1:]))
    assert len(set(bigrams)) == len(bigrams)


def test_repetition_penalty_in_generation(model, tok):
    prompt = tok.encode("ab")
    plain = list(generate_ids(model, prompt, 15, temperature=0))
    penalized = list(generate_ids(model, prompt, 15, temperature=0, repetition_penalty=3.0))
    assert penalized != plain
    ids = list(prompt)
    with torch.no_grad():  # each step: argmax of the penalized logits of a full forward
        for token in penalized:
            logits = model(torch.tensor([ids]))[0][0, -1]
            assert token == int(repetition_penalty(logits, ids, 3.0).argmax())
            ids.append(token)


def test_bad_rule_values_raise(model, tok):
    for kw in (dict(min_p=1.5), dict(repetition_penalty=0), dict(no_repeat_ngram_size=-1)):
        with pytest.raises(AttnkitError):
            attnkit.generate(model, "ab", 3, tokenizer=tok, **kw)
    with pytest.raises(AttnkitError, match="stop"):
        attnkit.generate(model, "ab", 3, tokenizer=tok, stop=[""])


class Scripted(torch.nn.Module):
    """Each step makes the next character of ``script`` certain. Its hidden state is the
    logits themselves (C = V), so its output layer is the identity."""

    abilities = Abilities(generates=True)

    def __init__(self, script: str, tok: CharTokenizer) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(context_length=64)
        self.lm_head = OutputHead(len(CHARS), len(CHARS), bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(len(CHARS)))
        self.ids = tok.encode(script)
        self.calls = 0

    def new_cache(self, batch_size: int, max_len: int | None = None):
        return SimpleNamespace(length=0, reset=lambda: None)

    def hidden(self, ids: torch.Tensor, *, cache=None) -> torch.Tensor:
        h = torch.full((ids.shape[0], ids.shape[1], len(CHARS)), -10.0)  # (B, T, C)
        h[:, -1, self.ids[self.calls % len(self.ids)]] = 10.0
        self.calls += 1
        return h

    def forward(self, ids: torch.Tensor, targets=None, *, cache=None):
        return self.lm_head(self.hidden(ids, cache=cache)), None


def test_stop_string_ends_generation_and_is_not_emitted(tok):
    pieces = list(stream(Scripted("abcdefgh", tok), "a", 8, tokenizer=tok, temperature=0,
                         stop=["de"]))
    assert "".join(pieces) == "abc"
    chunks = list(stream(Scripted("abcdefgh", tok), "a", 8, tokenizer=tok, temperature=0,
                         details=True, stop=["de", "b"]))
    assert chunks == [Chunk("a", None, 1), Chunk("", "stop", 2)]  # "b" was generated, then cut


def test_stream_holds_back_a_possible_stop_string(tok):
    # "ab" could begin the stop string "abc" and is held back; "abd" shows it was not
    pieces = list(stream(Scripted("habdabc", tok), "a", 7, tokenizer=tok, temperature=0,
                         stop=["abc"]))
    assert pieces == ["h", "abd"]


def test_finish_reason_length(model, tok):
    chunks = list(stream(model, "ab", 6, tokenizer=tok, seed=2, details=True))
    assert chunks[-1].finish_reason == "length"
    assert all(c.finish_reason is None for c in chunks[:-1])
    text = "".join(c.text for c in chunks)
    assert text == attnkit.generate(model, "ab", 6, tokenizer=tok, seed=2)
    assert [c.tokens for c in chunks] == sorted(c.tokens for c in chunks)
    assert chunks[-1].tokens == 6  # every generated id counted, for exact usage reports
    assert list(stream(model, "ab", 0, tokenizer=tok, details=True)) == [Chunk("", "length", 0)]


def test_stop_string_that_never_appears_changes_nothing(model, tok):
    kw = dict(tokenizer=tok, seed=5, temperature=1.3)
    assert attnkit.generate(model, "ab", 20, stop=["\n\n\n\n\n"], **kw)[:10] == \
        attnkit.generate(model, "ab", 20, **kw)[:10]


def test_generate_with_stop(model, tok):
    full = attnkit.generate(model, "ab", 20, tokenizer=tok, temperature=0)
    stop = full[5:7]
    cut = attnkit.generate(model, "ab", 20, tokenizer=tok, temperature=0, stop=stop)
    assert cut == full[:full.index(stop)]


# ------------------------------------------------------------------ batches


PROMPTS = ["a", "abc hd", "bb", "hgfedcbah"]


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi", "sinusoidal"])
def test_batch_greedy_equals_each_prompt_alone(pos, tok):
    m = tiny_decoder(pos)
    alone = [attnkit.generate(m, p, 12, tokenizer=tok, temperature=0) for p in PROMPTS]
    assert generate_batch(m, PROMPTS, 12, tokenizer=tok, temperature=0) == alone
    assert len(set(alone)) > 1


def test_batch_with_rules_equals_alone(model, tok):
    kw = dict(tokenizer=tok, temperature=0, repetition_penalty=1.5, no_repeat_ngram_size=2)
    alone = [attnkit.generate(model, p, 10, **kw) for p in PROMPTS]
    assert generate_batch(model, PROMPTS, 10, **kw) == alone


def test_batch_seeded_sampling_is_reproducible(model, tok):
    kw = dict(tokenizer=tok, temperature=1.5, top_k=6, min_p=0.05)
    first = generate_batch(model, PROMPTS, 15, seed=3, **kw)
    assert generate_batch(model, PROMPTS, 15, seed=3, **kw) == first
    assert generate_batch(model, PROMPTS, 15, seed=4, **kw) != first
    assert all(len(t) == 15 for t in first)


def test_batch_row_uses_seed_plus_index(model, tok):
    """Row i samples with seed + i; its result depends on its own prompt, not its neighbours."""
    kw = dict(tokenizer=tok, temperature=1.0)
    both = generate_batch(model, ["ab", "ab"], 10, seed=7, **kw)
    assert generate_batch(model, ["ab"], 10, seed=7, **kw) == both[:1]
    assert generate_batch(model, ["ab"], 10, seed=8, **kw) == both[1:]


def test_batch_stop_strings_per_row(model, tok):
    full = generate_batch(model, PROMPTS, 12, tokenizer=tok, temperature=0)
    stop = full[1][3:5]
    cut = generate_batch(model, PROMPTS, 12, tokenizer=tok, temperature=0, stop=[stop])
    assert cut == [t[:t.index(stop)] if stop in t else t for t in full]


def test_batch_limits(model, tok):
    assert generate_batch(model, [], 5, tokenizer=tok) == []
    with pytest.raises(AttnkitError, match="empty"):
        generate_batch(model, ["a", ""], 5, tokenizer=tok)
    with pytest.raises(AttnkitError, match="context"):  # generation may slide; a prompt may not
        generate_batch(model, ["a" * 33], 5, tokenizer=tok)
    assert generate_batch_ids(model, [[0, 1]], 0) == [[]]


def test_left_padded_forward_matches_unpadded_logits():
    m = tiny_decoder("rope")
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    ref, _ = m(ids)
    padded = torch.tensor([[0, 0, 3, 1, 4, 1, 5]])
    keep = torch.tensor([[False, False, True, True, True, True, True]])
    positions = torch.tensor([[0, 0, 0, 1, 2, 3, 4]])
    out, _ = m(padded, positions=positions, key_padding_mask=keep)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 2:], ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ CLI


def test_cli_rule_flags_match_the_python_api(small_run, capsys):
    run = attnkit.load(small_run)
    flags = ["--min-p", "0.1", "--repetition-penalty", "1.3", "--no-repeat-ngram", "2"]
    rc, out, err = cli(capsys, "sample", small_run, "--prompt", "The ", "--max-new-tokens",
                       "20", "--seed", "1", *flags)
    assert rc == 0, err
    expected = attnkit.generate(run.model, "The ", 20, tokenizer=run.tokenizer, temperature=0.8,
                                seed=1, min_p=0.1, repetition_penalty=1.3, no_repeat_ngram_size=2)
    assert run.generate("The ", 20, temperature=0.8, seed=1, min_p=0.1, repetition_penalty=1.3,
                        no_repeat_ngram_size=2) == expected
    assert out == "The " + expected + "\n"


def test_cli_stop_is_repeatable(small_run, capsys):
    args = ["sample", small_run, "--prompt", "The ", "--max-new-tokens", "25",
            "--temperature", "0"]
    rc, full, _ = cli(capsys, *args)
    assert rc == 0
    text = full[len("The "):-1]
    first, second = text[8:10], text[4:6]
    rc, out, _ = cli(capsys, *args, "--stop", first, "--stop", second)
    assert rc == 0
    cut = min(text.index(first), text.index(second))
    assert out == "The " + text[:cut] + "\n"


@pytest.mark.parametrize("flag,value", [("--min-p", "1.5"), ("--repetition-penalty", "0"),
                                        ("--no-repeat-ngram", "-1"), ("--stop", "")])
def test_cli_bad_rule_values(small_run, capsys, flag, value):
    rc, out, err = cli(capsys, "sample", small_run, flag, value)
    assert rc != 0 and out == ""
    assert flag in err
