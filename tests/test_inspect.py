"""``attnkit inspect``: the pictures exist and are PNGs, and the numbers in the JSON are
attention weights, entropies and temperature-scaled distributions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_cli import cli

import attnkit
from attnkit.cli import main
from attnkit.generate.beam import translate
from attnkit.viz import inspect as nums

TINY = ["--model.d_model=32", "--model.context_length=32", "--train.batch_size=4", "--train.eval_batches=2",
        "--train.steps=3", "--no-samples"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPT = "def f(x):"
MASKED = "def f([MASK]): re<|mask|>urn"


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def _train(root: Path, name: str, *extra: str) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ATTNKIT_CACHE", str(root / "cache"))
        assert main(["train", *TINY, *extra, "--out", str(root / name)]) == 0
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inspect")
    _train(root, "decoder", "--model.n_layers=2", "--model.n_heads=2")
    _train(root, "lstm", "--model.family=lstm", "--model.n_layers=1")
    _train(root, "encoder", "--model.family=encoder", "--data.task=mlm", "--model.n_layers=1",
           "--model.n_heads=2")
    _train(root, "seq2seq", "--model.family=seq2seq", "--data.task=seq2seq",
           "--data.path=synthetic:reverse", "--model.n_heads=2", "--model.n_encoder_layers=1",
           "--model.n_decoder_layers=1")
    return root


@pytest.fixture
def env(runs, monkeypatch) -> Path:
    monkeypatch.chdir(runs)
    monkeypatch.setenv("ATTNKIT_CACHE", str(runs / "cache"))
    return runs


def test_decoder_prompt_writes_every_picture_and_consistent_numbers(env, capsys, tmp_path):
    out_dir = tmp_path / "pics"
    rc, out, err = cli(capsys, "inspect", "decoder", "--prompt", PROMPT, "--out", out_dir,
                       "--top", "5")
    assert rc == 0, err
    names = [f"attention_layer{layer}_head{head}.png" for layer in range(2) for head in range(2)]
    names += ["attention_entropy.png", "next_token.png"]
    for name in names:
        assert is_png(out_dir / name), name
        assert str(out_dir / name) in out
    assert "next token at T=1" in out and "mean entropy" in out

    data = json.loads((out_dir / "inspect.json").read_text())
    T = len(PROMPT)
    assert data["tokens"][:3] == ["d", "e", "f"] and len(data["ids"]) == T
    w = torch.tensor(data["attention"]["weights"])
    assert list(w.shape) == data["attention"]["shape"] == [2, 2, T, T]
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, T), atol=1e-4)
    assert (w >= 0).all()
    assert (w.triu(diagonal=1) == 0).all()  # causal: no query sees a later key

    ent = torch.tensor(data["attention_entropy"]["per_layer_head"])
    assert ent.shape == (2, 2)
    assert (ent >= 0).all() and (ent <= math.log(T) + 1e-6).all()
    assert data["attention_entropy"]["max"] == pytest.approx(math.log(T))

    dists = {d["temperature"]: d for d in data["next_token"]}
    assert sorted(dists) == [0.5, 1.0, 2.0]
    for d in dists.values():
        probs = [e["prob"] for e in d["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert 0 < d["top_mass"] <= 1 + 1e-6 and d["max_prob"] == probs[0]
    assert dists[0.5]["max_prob"] > dists[1.0]["max_prob"] > dists[2.0]["max_prob"]
    assert dists[0.5]["entropy"] < dists[2.0]["entropy"]
    # the same token leads at every temperature: dividing logits by T keeps their order
    assert len({d["top"][0]["id"] for d in dists.values()}) == 1


def test_default_out_dir_and_layer_head_filter(env, capsys):
    rc, out, err = cli(capsys, "inspect", "decoder", "--prompt", "The ", "--layer", "1",
                       "--head", "0", "--temperatures", "0.7,1.5")
    assert rc == 0, err
    out_dir = env / "decoder" / "inspect"
    assert is_png(out_dir / "attention_layer1_head0.png")
    assert "attention_layer0_head0.png" not in out and "attention_layer1_head1.png" not in out
    data = json.loads((out_dir / "inspect.json").read_text())
    assert data["tokens"][-1] == "␣"  # whitespace is made visible
    assert data["attention"]["shape"] == [2, 2, 4, 4]  # the JSON keeps every layer and head
    assert [d["temperature"] for d in data["next_token"]] == [0.7, 1.5]


def test_embeddings_pca(env, capsys, tmp_path):
    rc, out, err = cli(capsys, "inspect", "decoder", "--embeddings", "--out", tmp_path)
    assert rc == 0, err
    assert is_png(tmp_path / "embeddings_pca.png")
    data = json.loads((tmp_path / "embeddings_pca.json").read_text())
    vocab = json.loads((env / "decoder" / "config.json").read_text())["model"]["vocab_size"]
    assert data["vocab_size"] == vocab == len(data["points"])
    assert [p["id"] for p in data["points"]] == list(range(vocab))
    ratios = data["explained_variance_ratio"]
    assert len(ratios) == 2 and 0 < ratios[1] <= ratios[0] <= 1
    assert "embeddings:" in out


def test_lstm_run_gets_only_the_next_token_picture(env, capsys, tmp_path):
    rc, out, err = cli(capsys, "inspect", "lstm", "--prompt", PROMPT, "--out", tmp_path)
    assert rc == 0, err
    assert is_png(tmp_path / "next_token.png")
    assert not list(tmp_path.glob("attention*.png"))
    assert "no attention" in out
    data = json.loads((tmp_path / "inspect.json").read_text())
    assert "attention" not in data and len(data["next_token"]) == 3


def test_encoder_run_gets_attention_and_the_mask_view_but_no_next_token(env, capsys, tmp_path):
    rc, out, err = cli(capsys, "inspect", "encoder", "--prompt", MASKED, "--out", tmp_path)
    assert rc == 0, err
    data = json.loads((tmp_path / "inspect.json").read_text())
    T = len(data["ids"])
    assert T == len(MASKED) - len("[MASK]<|mask|>") + 2 + 2  # a mask is one token; [CLS] ... [SEP]
    assert data["tokens"][0].startswith("<|")
    w = torch.tensor(data["attention"]["weights"])
    assert w.shape == (1, 2, T, T)
    assert torch.allclose(w.sum(-1), torch.ones(1, 2, T), atol=1e-4)
    assert (w.triu(diagonal=1) > 0).any()  # bidirectional: later keys are seen too
    assert is_png(tmp_path / "attention_layer0_head1.png") and is_png(tmp_path / "attention_entropy.png")
    assert not (tmp_path / "next_token.png").exists() and "next_token" not in data


def _mlm_logits(model, ids: list[int]) -> torch.Tensor:
    """(T, V) straight from the model's contract: an encoder without a classifier gives MLM logits."""
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0]


def test_mask_view_prints_the_mlm_argmax_at_each_mask(env, capsys, tmp_path):
    rc, out, err = cli(capsys, "inspect", "encoder", "--prompt", MASKED, "--out", tmp_path,
                       "--top", "3")
    assert rc == 0, err
    run = attnkit.load(env / "encoder", device="cpu")
    model, tok = run.model, run.tokenizer
    sp = tok.special_tokens
    # built here by hand: [CLS] "def f(" [MASK] "): re" [MASK] "urn" [SEP]; <|mask|> is accepted too
    ids = [sp["cls"], *tok.encode("def f("), sp["mask"], *tok.encode("): re"), sp["mask"],
           *tok.encode("urn"), sp["sep"]]
    data = json.loads((tmp_path / "inspect.json").read_text())
    assert data["ids"] == ids
    positions = [i for i, t in enumerate(ids) if t == sp["mask"]]
    assert [m["position"] for m in data["masked"]] == positions
    logits = _mlm_logits(model, ids)
    for k, (pos, entry) in enumerate(zip(positions, data["masked"])):
        best = int(logits[pos].argmax())
        at_1 = next(d for d in entry["distributions"] if d["temperature"] == 1.0)
        assert at_1["top"][0]["id"] == best and len(at_1["top"]) == 3
        probs = torch.softmax(logits[pos], -1)
        assert at_1["top"][0]["prob"] == pytest.approx(float(probs[best]), abs=1e-6)
        line = next(x for x in out.splitlines() if x.startswith(f"[MASK] {k + 1} of 2 "))
        assert line.startswith(f"[MASK] {k + 1} of 2 (token {pos}) at T=1: "
                               f"'{nums.token_label(tok, best)}' {float(probs[best]):.3f}, "), line
    assert is_png(tmp_path / "masked_tokens.png") and str(tmp_path / "masked_tokens.png") in out


def _saved_encoder(env: Path, name: str, tokenizer=None, **model) -> Path:
    """A run directory built directly from the MLM run's config, with ``model`` changes."""
    from attnkit.config import config_from_dict
    from attnkit.models import build_model
    from attnkit.runs import write_json
    from attnkit.tokenizers import load_tokenizer
    from attnkit.weights import save_checkpoint

    cfg = config_from_dict(json.loads((env / "encoder" / "config.json").read_text()))
    for key, value in model.items():
        setattr(cfg.model, key, value)
    run = env / name
    run.mkdir()
    write_json(run / "config.json", cfg.to_dict())
    (tokenizer or load_tokenizer(env / "encoder" / "tokenizer.json")).save(run / "tokenizer.json")
    torch.manual_seed(0)
    save_checkpoint(run, build_model(cfg.model), None, {"step": 0})
    return run


def test_mask_view_refusals_are_one_documented_line(env, capsys, tmp_path):
    from test_errors import refused

    from attnkit.tokenizers import CharTokenizer

    refused(cli(capsys, "inspect", "encoder", "--prompt", PROMPT, "--out", tmp_path),
            "the prompt has no [MASK]", 'e.g. --prompt "def f([MASK]):"')
    classifier = _saved_encoder(env, "classifier", mlm_head=False, n_labels=2)
    refused(cli(capsys, "inspect", classifier, "--prompt", MASKED),
            "without a masked-LM head (a classifier)")
    assert not (classifier / "inspect").exists()  # refused before anything is written
    chars = json.loads((env / "encoder" / "tokenizer.json").read_text())["chars"]
    no_mask = _saved_encoder(env, "no-mask", CharTokenizer(chars, ("pad", "cls", "sep")))
    refused(cli(capsys, "inspect", no_mask, "--prompt", MASKED, "--out", tmp_path),
            "has no mask token")
    # without a [MASK], an encoder that cannot fill one still shows its attention
    rc, out, err = cli(capsys, "inspect", classifier, "--prompt", PROMPT, "--out", tmp_path / "c")
    assert rc == 0, err
    assert is_png(tmp_path / "c" / "attention_entropy.png") and "no [MASK] predictions" in out


def test_seq2seq_draws_cross_attention_of_its_own_translation(env, tmp_path, capsys):
    rc, out, err = cli(capsys, "inspect", "seq2seq", "--prompt", "abc", "--out", tmp_path)
    assert rc == 0, err
    data = json.loads((tmp_path / "inspect.json").read_text())
    run = attnkit.load(env / "seq2seq")
    # the greedy output
    assert data["translation"] == translate(run.model, ["abc"], tokenizer=run.tokenizer)[0]
    src, produced = data["source_tokens"], data["output_tokens"]
    assert len(src) == 4  # a, b, c and EOS
    cross = torch.tensor(data["attention"]["cross"]["weights"])  # (L, nh, T, S)
    assert cross.shape == (1, 2, len(produced), len(src))
    torch.testing.assert_close(cross.sum(-1), torch.ones(cross.shape[:-1]), atol=1e-4, rtol=0)
    enc = torch.tensor(data["attention"]["encoder"]["weights"])
    assert enc.shape == (1, 2, len(src), len(src))
    for name in ("cross_attention", "encoder_attention", "decoder_attention"):
        assert is_png(tmp_path / f"{name}_layer0_head1.png")
    assert f"translation: {data['translation']!r}" in out
    rc, _, err = cli(capsys, "inspect", "seq2seq", "--prompt", "abc", "--head", "5")
    assert rc == 2 and "--head 5 is out of range" in err
    rc, _, err = cli(capsys, "inspect", "seq2seq", "--embeddings")
    assert rc == 2 and "--prompt for its attention pictures" in err


def test_temperature_distribution_functions():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    sharp, flat = nums.temperature_probs(logits, 0.5), nums.temperature_probs(logits, 2.0)
    for p in (sharp, flat, nums.temperature_probs(logits, 1.0)):
        assert p.sum().item() == pytest.approx(1.0)
    assert sharp.max() > flat.max()
    assert torch.allclose(nums.temperature_probs(logits, 1.0), torch.softmax(logits, -1))


def test_entropy_bounds_and_pca_on_known_inputs():
    T = 5
    uniform = torch.full((1, 1, T, T), 1 / T)
    onehot = torch.eye(T).view(1, 1, T, T)
    assert nums.attention_entropy(uniform).item() == pytest.approx(math.log(T))
    assert nums.attention_entropy(onehot).item() == pytest.approx(0.0)
    # points on a line: the first axis explains everything
    table = torch.outer(torch.arange(6.0), torch.tensor([1.0, 2.0, 0.0]))
    coords, explained = nums.embedding_pca(table)
    assert coords.shape == (6, 2) and explained[0].item() == pytest.approx(1.0)


@pytest.mark.parametrize("argv, message", [
    (["decoder", "--prompt", "caf\u00e9 \u2603"], "never saw"),
    (["decoder", "--prompt", "x" * 40], "context is 32"),
    (["decoder", "--prompt", ""], "empty"),
    (["decoder"], "--prompt"),
    (["decoder", "--prompt", "ab", "--temperatures", "1,0"], "positive"),
    (["decoder", "--prompt", "ab", "--temperatures", "hot"], "comma-separated"),
    (["decoder", "--prompt", "ab", "--top", "0"], "--top"),
    (["decoder", "--prompt", "ab", "--layer", "7"], "--layer 7 is out of range"),
    (["missing-run", "--prompt", "ab"], "not found"),
])
def test_bad_input_is_one_line_exit_2(env, capsys, argv, message):
    rc, out, err = cli(capsys, "inspect", *argv)
    assert rc == 2
    assert message in err and err.startswith("error:") and len(err.strip().splitlines()) == 1
