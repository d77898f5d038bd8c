"""End to end through the command line: train, sample, load, resume and every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import attnkit
from attnkit.cli import main
from attnkit.config import config_from_dict, resolve
from attnkit.errors import AttnkitError
from attnkit.runs import latest_checkpoint
from attnkit.tokenizers import load_tokenizer
from attnkit.train import Trainer

TINY = ["--model.n_layers=1", "--model.d_model=32", "--model.n_heads=2",
        "--model.context_length=32", "--train.batch_size=4", "--train.eval_batches=2"]
METRIC_KEYS = {"step", "loss", "lr", "tokens_per_s"}


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``attnkit *argv`` in this process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed earlier (e.g. by a fixture)
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def corpus_text(n_lines: int = 120) -> str:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "café", "naïve",
             "attention", "is", "all", "you", "need", "tokens", "layers", "heads"]
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6 + i % 5)) + "."
             for i in range(n_lines)]
    return "\n".join(lines) + "\n"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One tiny char-level run on the built-in corpus, shared by the sample/load tests."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ATTNKIT_CACHE", str(root / "cache"))
        rc = main(["train", *TINY, "--train.steps=3", "--no-samples", "--out", str(root / "run")])
    assert rc == 0
    return root / "run"


# ------------------------------------------------------------------ train


def test_train_on_builtin_corpus_writes_a_complete_run(env, capsys):
    rc, out, _ = cli(capsys, "train", *TINY, "--train.steps=4", "--train.eval_every=2",
                     "--train.log_every=1", "--train.checkpoint_every=2", "--train.samples=1",
                     "--train.sample_tokens=10")
    assert rc == 0
    run = env / "runs" / "pydoc-char"
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "checkpoints/latest"):
        assert (run / name).is_file(), name
    steps = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert steps == ["step-000002", "step-000004"]
    for step in steps:
        for name in ("model.safetensors", "optimizer.pt", "state.json", "config.json",
                     "tokenizer.json"):
            assert (run / "checkpoints" / step / name).is_file(), (step, name)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000004"

    lines = metrics(run)
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    for m in lines:
        assert METRIC_KEYS <= set(m), m
        assert m["loss"] > 0 and m["lr"] > 0 and m["tokens_per_s"] > 0
    assert [("val_loss" in m) for m in lines] == [False, True, False, True]

    config = json.loads((run / "config.json").read_text())
    tokenizer = load_tokenizer(run / "tokenizer.json")
    assert config["model"]["vocab_size"] == tokenizer.vocab_size > 0
    assert config["train"]["steps"] == 4 and config["model"]["d_model"] == 32
    assert config_from_dict(config).model.vocab_size == tokenizer.vocab_size

    assert "done: step 4" in out and "--- sample 1 ---" in out
    assert "runs/pydoc-char" in out

    # a second default run gets a fresh directory beside the first
    rc, out, _ = cli(capsys, "train", *TINY, "--train.steps=1", "--no-samples")
    assert rc == 0
    second = env / "runs" / "pydoc-char-2"
    assert (second / "checkpoints" / "latest").is_file()
    assert "runs/pydoc-char-2" in out
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]  # the first run is untouched


def test_train_on_a_file_with_a_recipe(env, capsys):
    text = corpus_text()
    (env / "corpus.txt").write_text(text, encoding="utf-8")
    rc, _, _ = cli(capsys, "train", "shakespeare-char", "--data.path=corpus.txt", *TINY,
                   "--train.steps=2", "--no-samples")
    assert rc == 0
    run = env / "runs" / "shakespeare-char"  # named after the recipe
    assert load_tokenizer(run / "tokenizer.json").chars == sorted(set(text))
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["path"] == "corpus.txt"
    assert config["model"]["style"] == "gpt2" and config["model"]["bias"] is False  # the recipe
    assert config["model"]["n_layers"] == 1  # the override


def test_train_on_a_folder(env, capsys):
    folder = env / "texts"
    (folder / "sub").mkdir(parents=True)
    a, b = corpus_text(60), corpus_text(70).upper()
    (folder / "a.txt").write_text(a, encoding="utf-8")
    (folder / "sub" / "b.md").write_text(b, encoding="utf-8")
    rc, _, _ = cli(capsys, "train", f"--data.path={folder}", *TINY, "--train.steps=2",
                   "--no-samples", "--out", "run")
    assert rc == 0
    assert load_tokenizer(env / "run" / "tokenizer.json").chars == sorted(set(a + b + "\n"))
    assert (env / "run" / "checkpoints" / "latest").is_file()


@pytest.mark.parametrize("kind, extra", [("byte", []), ("bpe", ["--data.vocab_size=300"])])
def test_train_and_sample_byte_and_bpe(env, capsys, kind, extra):
    (env / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    rc, _, _ = cli(capsys, "train", "--data.path=corpus.txt", f"--data.tokenizer={kind}", *extra,
                   *TINY, "--train.steps=2", "--no-samples", "--out", "run")
    assert rc == 0
    run = env / "run"
    tokenizer = load_tokenizer(run / "tokenizer.json")
    assert tokenizer.kind == kind
    vocab = json.loads((run / "config.json").read_text())["model"]["vocab_size"]
    assert vocab == tokenizer.vocab_size
    if kind == "byte":
        assert vocab == 256
    else:
        assert 256 < vocab <= 300
    # any prompt works for byte-level tokenizers, including characters never seen
    rc, out, err = cli(capsys, "sample", run, "--prompt", "Zürich ✓", "--max-new-tokens", "12",
                       "--seed", "0")
    assert rc == 0, err
    assert out.startswith("Zürich ✓") and out.endswith("\n")


# ------------------------------------------------------------------ sample


def test_sample_prints_prompt_then_the_continuation(trained_run, capsys):
    rc, out, err = cli(capsys, "sample", trained_run, "--prompt", "The ", "--max-new-tokens",
                       "20", "--seed", "1")
    assert rc == 0 and err == ""
    assert out.startswith("The ") and out.endswith("\n")
    assert len(out) == len("The ") + 20 + 1  # char tokens: one character each
    run = attnkit.load(trained_run)
    expected = run.generate("The ", 20, temperature=0.8, seed=1)
    assert out == "The " + expected + "\n"


def test_sample_with_a_seed_is_deterministic(trained_run, capsys):
    args = ["sample", trained_run, "--prompt", "def ", "--max-new-tokens", "30", "--top-k", "20",
            "--top-p", "0.95", "--temperature", "1.2"]
    first = cli(capsys, *args, "--seed", "5")
    assert first[0] == 0
    assert cli(capsys, *args, "--seed", "5") == first
    assert cli(capsys, *args, "--seed", "6")[1] != first[1]


def test_sample_temperature_zero_is_greedy(trained_run, capsys):
    args = ["sample", trained_run, "--prompt", "x", "--max-new-tokens", "25"]
    greedy = cli(capsys, *args, "--temperature", "0")
    assert greedy[0] == 0
    assert cli(capsys, *args, "--temperature", "0", "--seed", "3") == greedy  # seed is moot
    assert cli(capsys, *args, "--top-k", "1", "--seed", "9")[1] == greedy[1]
    run = attnkit.load(trained_run)
    assert greedy[1] == "x" + attnkit.generate(run.model, "x", 25, tokenizer=run.tokenizer,
                                               temperature=0) + "\n"


def test_sample_backend_plain_decodes_the_model_as_written(trained_run, capsys, monkeypatch):
    """--backend plain leaves the loaded model's classes alone and prints the same greedy text
    as the default back-end; an unknown name is a one-line usage error."""
    from attnkit.backends import accelerate

    seen = []

    def spy(model, purpose="decode", backend="auto"):
        seen.append(backend)
        return accelerate(model, purpose, backend)

    monkeypatch.setattr("attnkit.backends.accelerate", spy)
    args = ["sample", trained_run, "--prompt", "x", "--max-new-tokens", "12", "--temperature", "0"]
    plain = cli(capsys, *args, "--backend", "plain")
    assert plain[0] == 0 and cli(capsys, *args) == plain and seen == ["plain", "auto"]
    with pytest.raises(SystemExit) as exit_:
        main(["sample", str(trained_run), "--backend", "fastest"])
    assert exit_.value.code == 2 and "invalid choice: 'fastest'" in capsys.readouterr().err


def test_sample_several(trained_run, capsys):
    rc, out, _ = cli(capsys, "sample", trained_run, "--num-samples", "2", "--seed", "4",
                     "--max-new-tokens", "5", "--prompt", "a")
    assert rc == 0
    assert out.count("--- sample ") == 2
    run = attnkit.load(trained_run)
    for i in range(2):  # seeds seed, seed + 1
        text = run.generate("a", 5, temperature=0.8, seed=4 + i)
        assert f"--- sample {i + 1} ---\na{text}\n" in out


# ------------------------------------------------------------------ load


def test_load_returns_an_eval_model_with_its_tokenizer(trained_run):
    run = attnkit.load(trained_run)
    assert isinstance(run, attnkit.Loaded) and run.source == Path(trained_run)
    model = run.model
    assert isinstance(model, attnkit.Decoder)
    assert not model.training and not any(m.training for m in model.modules())
    assert run.tokenizer.vocab_size == model.cfg.vocab_size
    assert run.config.train.steps == 3 and run.labels is None
    assert not hasattr(model, "tokenizer") and not hasattr(model, "run_config")
    assert next(model.parameters()).device.type == "cpu"

    stored = load_file(str(latest_checkpoint(trained_run) / "model.safetensors"))
    state = model.state_dict()
    assert set(stored) <= set(state)
    for name, tensor in stored.items():
        assert torch.equal(state[name], tensor), name
    if model.cfg.tie_embeddings:
        assert model.lm_head.weight is model.tok_emb.weight

    ids = torch.tensor([run.tokenizer.encode("import os\n")])
    again = attnkit.load(trained_run).model
    assert torch.equal(model(ids)[0], again(ids)[0])


def test_loaded_model_matches_the_trainer(env):
    cfg = resolve(overrides={"model.n_layers": "1", "model.d_model": "32", "model.n_heads": "2",
                             "model.context_length": "16", "model.tie_embeddings": "false",
                             "train.steps": "2", "train.batch_size": "4",
                             "train.eval_batches": "1"})
    trainer = Trainer(cfg, env / "run", log=lambda *_: None)
    trainer.run()
    loaded = attnkit.load(env / "run")
    trainer.model.eval()
    ids = torch.tensor([loaded.tokenizer.encode("class A: pass")])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids)[0], trainer.model(ids)[0])
    assert loaded.tokenizer.to_dict() == trainer.tokenizer.to_dict()


# ------------------------------------------------------------------ resume


def test_resume_is_bit_identical_to_an_uninterrupted_run(env, capsys):
    common = [*TINY, "--model.dropout=0.1", "--train.log_every=1", "--no-samples"]
    assert cli(capsys, "train", *common, "--train.steps=6", "--train.checkpoint_every=3",
               "--out", "full")[0] == 0
    assert cli(capsys, "train", *common, "--train.steps=3", "--out", "part")[0] == 0
    rc, out, _ = cli(capsys, "train", "--resume", "part", "--train.steps=6", "--no-samples")
    assert rc == 0
    assert "resumed" in out and "step 3" in out

    full, part = env / "full", env / "part"
    assert (part / "checkpoints" / "latest").read_text().strip() == "step-000006"
    a = load_file(str(full / "checkpoints" / "step-000006" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "step-000006" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    m_full, m_part = metrics(full), metrics(part)
    assert [m["step"] for m in m_part] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(m_full, m_part):
        assert (x["step"], x["loss"], x["lr"]) == (y["step"], y["loss"], y["lr"])
    assert m_full[-1]["val_loss"] == m_part[-1]["val_loss"]
    assert json.loads((part / "config.json").read_text())["train"]["steps"] == 3  # as trained


# ------------------------------------------------------------------ bad input


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


BAD_TRAIN = [
    ("missing data file", ["--data.path=missing.txt"], "corpus not found: missing.txt"),
    ("empty data file", ["--data.path=empty.txt"], "is empty"),
    ("corpus shorter than the context", ["--data.path=short.txt", "--model.context_length=64"],
     "corpus too short"),
    ("misspelt key", ["--train.stpes=3"], "did you mean 'train.steps'"),
    ("not an integer", ["--train.steps=abc"], "train.steps must be an integer, got 'abc'"),
    ("bad choice", ["--model.pos=ropee"], "did you mean 'rope'"),
    ("incompatible knobs", ["--model.n_heads=3"], "not divisible by model.n_heads=3"),
    ("unknown style", ["--model.style=lama"], "did you mean 'llama'"),
]


@pytest.mark.parametrize("extra, message", [c[1:] for c in BAD_TRAIN], ids=[c[0] for c in BAD_TRAIN])
def test_bad_train_input(env, capsys, extra, message):
    write(env / "empty.txt", "")
    write(env / "short.txt", "hello world\n" * 3)
    rc, out, err = cli(capsys, "train", *TINY, "--train.steps=1", *extra, "--out", "run")
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert message in err
    assert out == ""
    assert not (env / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["train", "train.steps=3"], "train.steps=3"),  # missing dashes: taken for a recipe
    (["train", "shakespeare-char", "train.steps=3"], "cannot parse argument 'train.steps=3'"),
    (["train", "--bogus"], "cannot parse argument '--bogus'"),
])
def test_bad_train_arguments(env, capsys, argv, message):
    rc, out, err = cli(capsys, *argv)
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert message in err
    assert not (env / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_on_a_cpu_machine(env, capsys):
    rc, out, err = cli(capsys, "train", *TINY, "--train.device=cuda", "--out", "run")
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "CUDA is not available" in err
    assert not (env / "run").exists()


def test_out_pointing_at_an_existing_run(trained_run, env, capsys):
    before = snapshot(trained_run)
    rc, out, err = cli(capsys, "train", *TINY, "--train.steps=1", "--out", trained_run)
    assert rc == 2
    assert len(err.splitlines()) == 1 and "already holds a run" in err
    assert f"--resume {trained_run}" in err
    assert snapshot(trained_run) == before


@pytest.mark.parametrize("extra, message", [
    (["--model.n_layers=2"], "cannot change 'model.n_layers' when resuming"),
    (["--data.path=other.txt"], "cannot change 'data.path' when resuming"),
    (["--out", "elsewhere"], "--resume continues an existing run"),
])
def test_resume_refuses_changes(trained_run, env, capsys, extra, message):
    before = snapshot(trained_run)
    rc, out, err = cli(capsys, "train", "--resume", trained_run, *extra)
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert snapshot(trained_run) == before
    assert not (env / "elsewhere").exists()


def test_resume_a_directory_that_is_not_a_run(env, capsys):
    (env / "empty").mkdir()
    rc, _, err = cli(capsys, "train", "--resume", "empty")
    assert rc == 2 and err.startswith("error: ") and "no config.json" in err


def test_sample_bad_runs(env, capsys):
    (env / "norun").mkdir()
    rc, out, err = cli(capsys, "sample", "norun")
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "holds no checkpoint" in err

    rc, out, err = cli(capsys, "sample", "missing")
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and "run directory not found: missing" in err


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "\u4e2d\u6587"], "never saw: '\u4e2d', '\u6587'"),
    (["--prompt", "x" * 40], "the prompt is 40 tokens but the model's context is 32"),
    (["--prompt", ""], "prompt is empty"),
    (["--temperature", "-1"], "--temperature must be 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--max-new-tokens", "-1"], "--max-new-tokens must be 0 or more"),
    (["--train.steps=3"], "unrecognized arguments"),
])
def test_sample_bad_arguments(trained_run, capsys, argv, message):
    rc, out, err = cli(capsys, "sample", trained_run, *argv)
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert message in err


def test_sample_bad_prompt_prints_nothing(trained_run, capsys):
    rc, out, err = cli(capsys, "sample", trained_run, "--prompt", "caf\u4e2d")
    assert rc == 2 and out == ""


def test_sample_too_long_prompt_prints_nothing(trained_run, capsys):
    rc, out, err = cli(capsys, "sample", trained_run, "--prompt", "x" * 40)
    assert rc == 2 and "context is 32" in err
    assert out == ""


def test_space_separated_override_on_the_command_line(env, capsys):
    rc, _, err = cli(capsys, "train", *TINY, "--train.steps", "1", "--no-samples", "--out", "run")
    assert rc == 0, err


@pytest.mark.parametrize("case", ["llama-n-heads", "non-mapping-section"])
def test_crashing_inputs_are_user_errors(env, capsys, case):
    if case == "llama-n-heads":
        argv = ["train", *TINY, "--model.style=llama", "--model.n_heads=abc", "--out", "run"]
    else:
        write(env / "bad.yaml", "model: gpt2\n")
        argv = ["train", "bad.yaml", "--out", "run"]
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and err.startswith("error: ")


# ------------------------------------------------------------------ help and version


def test_train_help_mentions_every_section(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for needle in ("--model.", "--train.", "--data.", "--resume", "--out", "shakespeare-char"):
        assert needle in out, needle


def test_sample_help_mentions_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed"):
        assert flag in out, flag


def test_version_and_no_command(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"attnkit {attnkit.__version__}"
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_unknown_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tran"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ")


def test_debug_shows_the_exception(env):
    with pytest.raises(AttnkitError, match="did you mean 'train.steps'"):
        main(["train", "--train.stpes=3", "--debug"])


# ------------------------------------------------------------------ a real process


def test_subprocess_error_is_one_line_with_exit_code_2(tmp_path):
    env = dict(os.environ, ATTNKIT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "attnkit", "train", *TINY, "--train.stpes=3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "did you mean 'train.steps'" in lines[0]
    assert proc.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_vocab_size_and_compile_flags_are_aliases(env, capsys, monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(cfg, run_dir, resume=False, log=print, force=False):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr("attnkit.train.Trainer", fake_trainer)
    with pytest.raises(Stop):
        main(["train", "--data.tokenizer=bpe", "--vocab-size", "512", "--compile"])
    assert seen["cfg"].data.vocab_size == 512 and seen["cfg"].train.compile is True


@pytest.mark.slow
def test_compiled_training_checkpoints_the_plain_module(env, capsys):
    rc, _, err = cli(capsys, "train", *TINY, "--train.steps=2", "--compile", "--no-samples",
                     "--out", "run")
    assert rc == 0, err
    names = load_file(str(env / "run/checkpoints/step-000002/model.safetensors"))
    assert names and not any("_orig_mod" in k for k in names)


def test_sample_refuses_encoder_and_seq2seq_runs(env, capsys, monkeypatch):
    from attnkit.config import EncoderConfig, RunConfig, Seq2SeqConfig
    from attnkit.models import build_model

    small = {"vocab_size": 16, "context_length": 8, "d_model": 16, "n_heads": 2}
    for cfg, hint in ((EncoderConfig(**small, n_layers=1), "attnkit embed"),
                      (Seq2SeqConfig(**small, n_encoder_layers=1, n_decoder_layers=1),
                       "attnkit translate")):
        run = attnkit.Loaded(build_model(cfg).eval(), None, RunConfig())
        monkeypatch.setattr(attnkit, "load", lambda *a, r=run, **k: r)
        rc, out, err = cli(capsys, "sample", "somerun")
        assert rc == 2 and out == "" and hint in err and len(err.strip().splitlines()) == 1


def test_sample_with_beam_search_is_deterministic_and_checks_its_arguments(trained_run, capsys):
    args = ["sample", trained_run, "--prompt", "The ", "--max-new-tokens", "10", "--beam", "3"]
    rc, first, _ = cli(capsys, *args)
    rc2, second, _ = cli(capsys, *args)
    assert rc == rc2 == 0 and first == second and first.startswith("The ")
    rc, out, err = cli(capsys, "sample", trained_run, "--beam", "0")
    assert rc == 2 and out == "" and "--beam" in err
    rc, out, err = cli(capsys, "sample", trained_run, "--prompt", "The ", "--max-new-tokens", "500",
                       "--beam", "2")
    assert rc == 2 and out == "" and "exceed the model's context" in err
