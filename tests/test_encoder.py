"""The encoder family: the BERT-style model, masked-LM and classification tasks, labelled data,
and `attnkit embed` / `attnkit train` end to end."""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import cli

import attnkit
from attnkit.cli import main
from attnkit.config import EncoderConfig, config_from_dict, load_recipe
from attnkit.data.labeled import encode_text, label_names, pad_batch, read_labeled, split_indices
from attnkit.errors import AttnkitError
from attnkit.models import Encoder
from attnkit.tokenizers import train_tokenizer
from attnkit.train.task_encoder import mask_tokens

V = 37


DATA = Path(__file__).resolve().parent / "data"


def tiny(**kw) -> Encoder:
    base = dict(vocab_size=V, context_length=24, d_model=32, n_layers=2, n_heads=4)
    torch.manual_seed(0)
    return Encoder(EncoderConfig(**{**base, **kw})).eval()


def padded(ids: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` with ``extra`` random (masked) tokens after each row, and the mask."""
    B, T = ids.shape
    junk = torch.randint(0, V, (B, extra), generator=torch.Generator().manual_seed(3))
    mask = torch.cat([torch.ones(B, T), torch.zeros(B, extra)], dim=1).long()
    return torch.cat([ids, junk], dim=1), mask


# ------------------------------------------------------------------ the model


def test_contract_picks_the_head_from_what_is_given():
    model = tiny(n_labels=3, type_vocab_size=2)
    ids = torch.randint(0, V, (2, 10))
    logits, loss = model(ids)  # a classifier: class logits by default
    assert logits.shape == (2, 3) and loss is None
    logits, loss = model(ids, ids)  # targets: the masked-LM head
    assert logits.shape == (2, 10, V) and loss.ndim == 0
    logits, loss = model(ids, labels=torch.tensor([0, 2]))
    assert logits.shape == (2, 3) and loss.ndim == 0
    logits, _ = tiny()(ids)  # no classifier: MLM logits
    assert logits.shape == (2, 10, V)
    assert model.embed(ids).shape == (2, 32)


def test_contract_errors():
    ids = torch.randint(0, V, (1, 5))
    with pytest.raises(ValueError, match="not both"):
        tiny(n_labels=2)(ids, ids, labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="no classification head"):
        tiny()(ids, labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="no masked-LM head"):
        tiny(mlm_head=False)(ids, ids)
    with pytest.raises(ValueError, match="no segment embeddings"):
        tiny()(ids, token_type_ids=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="exceeds the learned position table"):
        tiny()(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(AttnkitError, match="n_labels must be 0"):
        EncoderConfig(n_labels=1)


def test_ignore_index_excluded_from_mlm_loss():
    model = tiny()
    ids = torch.randint(0, V, (1, 8))
    targets = torch.full_like(ids, -100)
    targets[0, 2], targets[0, 5] = 4, 9
    logits, loss = model(ids, targets)
    expected = torch.nn.functional.cross_entropy(logits[0, [2, 5]], torch.tensor([4, 9]))
    torch.testing.assert_close(loss, expected)


POS = ["learned", "sinusoidal", "rope", "alibi", "none"]


@pytest.mark.parametrize("pos,norm_position,n_kv_heads",
                         list(itertools.product(POS, ["post", "pre"], [4, 1])))
def test_padding_does_not_change_real_tokens(pos, norm_position, n_kv_heads):
    model = tiny(pos=pos, norm_position=norm_position, n_kv_heads=n_kv_heads, type_vocab_size=2)
    ids = torch.randint(0, V, (2, 9))
    plain, _ = model.hidden_states(ids)
    ids_p, mask = padded(ids, 6)
    hidden, _ = model.hidden_states(ids_p, attention_mask=mask)
    torch.testing.assert_close(hidden[:, :9], plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.embed(ids_p, mask), model.embed(ids), atol=1e-5, rtol=0)


def test_rows_of_different_lengths_match_their_own_forward():
    model = tiny(n_labels=2, pooling="mean")
    a, b = torch.randint(0, V, (1, 12)), torch.randint(0, V, (1, 5))
    ids, mask = pad_batch([a[0].tolist(), b[0].tolist()], pad_id=0)
    both = model.embed(ids, mask)
    torch.testing.assert_close(both[1], model.embed(b)[0], atol=1e-5, rtol=0)
    logits, _ = model(ids, attention_mask=mask)
    torch.testing.assert_close(logits[1], model(b)[0][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos", POS)
def test_attention_is_bidirectional(pos):
    model = tiny(pos=pos)
    ids = torch.randint(0, V, (1, 10))
    later = ids.clone()
    later[0, -1] = (ids[0, -1] + 1) % V
    a, _ = model.hidden_states(ids)
    b, _ = model.hidden_states(later)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # the first token sees the last


@pytest.mark.parametrize("pos", ["learned", "alibi", "rope"])
def test_eager_matches_sdpa_and_padding_gets_no_attention(pos):
    sdpa, eager = tiny(pos=pos), tiny(pos=pos, attention="eager")
    ids, mask = padded(torch.randint(0, V, (2, 7)), 4)
    a, _ = sdpa.hidden_states(ids, attention_mask=mask)
    b, _ = eager.hidden_states(ids, attention_mask=mask)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-5, rtol=0)
    for w in sdpa.attention_maps(ids, mask):  # (B, nh, T, T)
        assert w[..., 7:].abs().max() == 0
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))


@pytest.mark.parametrize("knobs", [
    dict(), dict(norm="rmsnorm", ffn="swiglu", bias=False), dict(ffn="geglu", n_kv_heads=2),
    dict(norm_position="pre", embedding_norm=False, tie_embeddings=False, dropout=0.1),
])
def test_gradients_reach_every_parameter_of_the_head_in_use(knobs):
    model = tiny(n_labels=2, type_vocab_size=2, **knobs).train()
    ids = torch.randint(0, V, (2, 8))
    model(ids, ids)[1].backward()
    for name, p in model.named_parameters():
        unused = name.startswith(("pooler", "classifier"))
        assert (p.grad is None) == unused, name
    model.zero_grad(set_to_none=True)
    model(ids, labels=torch.tensor([0, 1]))[1].backward()
    for name, p in model.named_parameters():
        if not name.startswith("mlm_head"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_embed_is_the_masked_mean_and_normalizes():
    model = tiny()
    ids, mask = padded(torch.randint(0, V, (3, 6)), 3)
    hidden, _ = model.hidden_states(ids, attention_mask=mask)
    torch.testing.assert_close(model.embed(ids, mask), hidden[:, :6].mean(1))
    unit = model.embed(ids, mask, normalize=True)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(3))


def overfit(model: Encoder, batch: dict, steps: int = 150) -> float:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        _, loss = model(**batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_overfits_one_masked_lm_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V, (4, 16), generator=g)
    inputs, targets = mask_tokens(ids, g, 0.3, 0, torch.arange(4, V), torch.ones_like(ids).bool())
    assert overfit(tiny(), {"input_ids": inputs, "targets": targets}) < 0.05


def test_overfits_one_classification_batch():
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, V, (n,), generator=g).tolist() for n in (5, 9, 12, 7, 3, 10)]
    ids, mask = pad_batch(seqs, pad_id=0)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 2, 1, 0])}
    model = tiny(n_labels=3, pooling="cls")
    assert overfit(model, batch) < 0.05
    model.eval()
    assert model(**batch)[0].argmax(-1).tolist() == [0, 1, 2, 2, 1, 0]


# ------------------------------------------------------------------ masking


def test_mask_tokens_follows_bert_80_10_10_and_is_deterministic():
    ids = torch.randint(5, 1000, (64, 256), generator=torch.Generator().manual_seed(0))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False  # a [CLS] column
    run = lambda: mask_tokens(ids, torch.Generator().manual_seed(7), 0.15, 1,  # noqa: E731
                              torch.arange(5, 1000), maskable)
    inputs, targets = run()
    again = run()
    assert torch.equal(inputs, again[0]) and torch.equal(targets, again[1])
    chosen = targets != -100
    assert not chosen[:, 0].any()
    assert torch.equal(targets[chosen], ids[chosen])
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    n = chosen.sum().item()
    as_mask = (inputs[chosen] == 1).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # the rest: random tokens
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_every_row_predicts_at_least_one_token():
    ids = torch.randint(5, 50, (8, 12))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :3] = False
    _, targets = mask_tokens(ids, torch.Generator().manual_seed(0), 1e-9, 1, torch.arange(5, 50),
                             maskable)
    assert ((targets != -100).sum(1) == 1).all()
    assert (targets[:, :3] == -100).all()


# ------------------------------------------------------------------ labelled data


def make_reviews(n: int = 600, seed: int = 0) -> list[tuple[str, str]]:
    """The generator of tests/data/reviews.csv: sentiment where a "not" (a quarter of the
    time) flips the adjective's label."""
    subjects = ["the film", "the plot", "the acting", "the ending", "the soundtrack",
                "the script", "this book", "the show", "the dialogue", "the cast"]
    verbs = ["was", "is", "felt", "seemed"]
    good = ["good", "great", "wonderful", "fun", "moving", "clever", "charming", "gripping"]
    bad = ["bad", "dull", "awful", "boring", "clumsy", "weak", "tedious", "bland"]
    tails = ["", " at all", " to me", ", honestly", " from start to finish", " overall"]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        positive = rng.random() < 0.5
        negated = rng.random() < 0.25
        adj = rng.choice(good if positive else bad)
        text = (f"{rng.choice(subjects)} {rng.choice(verbs)} {'not ' if negated else ''}{adj}"
                f"{rng.choice(tails)}.")
        if rng.random() < 0.3:
            text = "i thought " + text
        out.append((text[0].upper() + text[1:], "positive" if positive != negated else "negative"))
    return out


def reviews_csv(n: int = 600) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(make_reviews(n))
    return buf.getvalue()


def test_shipped_reviews_are_the_generator_output():
    assert (DATA / "reviews.csv").read_text(encoding="utf-8") == reviews_csv()


def test_read_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('\ufeffid,Label,text\n1,pos,"hello, world"\n2,neg,"two\nlines"\n\n',
                        encoding="utf-8")
    assert read_labeled(csv_path) == [("hello, world", "pos"), ("two\nlines", "neg")]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n\n{"label": 0, "text": "b", "x": 2}\n')
    assert read_labeled(jsonl) == [("a", "1"), ("b", "0")]
    assert label_names(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert label_names(["pos", "neg"]) == ["neg", "pos"]
    train, val = split_indices(10, 0.2)
    assert sorted(train.tolist() + val.tolist()) == list(range(10)) and len(val) == 2


@pytest.mark.parametrize("name,content,message", [
    ("d.csv", "text,category\nhi,a\n", "d.csv: the header has no 'label' column (found 'text', "
                                      "'category'"),
    ("d.csv", "", "is empty"),
    ("d.csv", "text,label\n", "no examples, so the label set is empty"),
    ("d.csv", "text,label\nhi,\n", "d.csv:2: the label is empty"),
    ("d.csv", "text,label\na,x\nb,x\n", "has only the label 'x'"),
    ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n',
     r"d.jsonl:2: not valid JSON"),
    ("d.jsonl", '{"text": "a"}\n', "d.jsonl:1: the object has no 'label' key"),
    ("d.jsonl", '["a", "b"]\n', "d.jsonl:1: expected an object"),
    ("d.jsonl", '{"text": 3, "label": "x"}\n', "text must be a string"),
    ("d.txt", "a\tb\n", "unknown format '.txt'"),
])
def test_labelled_data_errors_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AttnkitError, match=message.replace("(", r"\(").replace("[", r"\[")) as e:
        label_names([lab for _, lab in read_labeled(path)], where=str(path))
    assert "\n" not in str(e.value)


def test_encode_text_frames_with_cls_sep_and_truncates():
    tok = train_tokenizer("char", "abc", specials=("pad", "cls", "sep"))
    sp = tok.special_tokens
    assert encode_text(tok, "abc", 10) == [sp["cls"], 0, 1, 2, sp["sep"]]
    assert encode_text(tok, "abcabc", 4) == [sp["cls"], 0, 1, sp["sep"]]
    plain = train_tokenizer("char", "abc")
    assert encode_text(plain, "abcabc", 4) == [0, 1, 2, 0]


# ------------------------------------------------------------------ end to end

TINY = ["--model.family=encoder", "--model.n_layers=1", "--model.d_model=32",
        "--model.n_heads=2", "--model.context_length=32", "--train.batch_size=4",
        "--train.eval_batches=2", "--no-samples"]


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path.parent / "encoder-cache"))
    return tmp_path


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mlm")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ATTNKIT_CACHE", str(root.parent / "encoder-cache"))
        rc = main(["train", "--debug", *TINY, "--data.task=mlm", "--train.steps=3",
                   "--train.eval_every=3", "--out", "run"])
    assert rc == 0
    return root / "run"


def test_mlm_run_has_special_tokens_and_masked_accuracy(mlm_run):
    run = attnkit.load(mlm_run, device="cpu")
    assert isinstance(run.model, Encoder)
    assert {"mask", "cls", "sep", "pad"} <= set(run.tokenizer.special_tokens)
    last = json.loads((mlm_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= last["accuracy"] <= 1.0 and last["val_loss"] > 0


def test_mlm_resume_is_bit_identical(env, capsys):
    common = [*TINY, "--data.task=mlm", "--model.dropout=0.1", "--train.log_every=1"]
    assert cli(capsys, "train", *common, "--train.steps=4", "--out", "full")[0] == 0
    assert cli(capsys, "train", *common, "--train.steps=2", "--out", "part")[0] == 0
    assert cli(capsys, "train", "--resume", "part", "--train.steps=4", "--no-samples")[0] == 0
    a = load_file(str(env / "full/checkpoints/step-000004/model.safetensors"))
    b = load_file(str(env / "part/checkpoints/step-000004/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mlm_samples_show_the_fill_in(env, capsys):
    rc, out, _ = cli(capsys, "train", *TINY[:-1], "--data.task=mlm", "--train.steps=1",
                     "--train.samples=1", "--train.sample_tokens=20", "--out", "s")
    assert rc == 0
    assert "masked: " in out and "model:  " in out and "masked tokens right" in out


def test_embed_prints_json_and_a_summary(mlm_run, capsys):
    rc, out, _ = cli(capsys, "embed", mlm_run, "--text", "The object", "--text", "x", "--json")
    assert rc == 0
    vectors = json.loads(out)
    assert len(vectors) == 2 and all(len(v) == 32 for v in vectors)
    assert all(isinstance(x, float) for x in vectors[0])
    rc, out, _ = cli(capsys, "embed", mlm_run, "--text", "The object", "--normalize")
    assert rc == 0 and "dim 32, norm 1.0000" in out and "12 tokens" in out  # [CLS] 10 [SEP]


def test_embed_errors(mlm_run, env, capsys):
    assert cli(capsys, "train", *TINY[1:], "--train.steps=1", "--out", "dec")[0] == 0
    rc, _, err = cli(capsys, "embed", "dec", "--text", "hi")
    assert rc == 2 and "holds a decoder model" in err and len(err.splitlines()) == 1
    rc, _, err = cli(capsys, "embed", mlm_run, "--text", "\u2603")
    assert rc == 2 and err.startswith("error: ") and "never saw" in err
    rc, _, err = cli(capsys, "embed", "nowhere", "--text", "hi")
    assert rc == 2 and "not found" in err
    with pytest.raises(SystemExit) as e:  # argparse's own error: one line, exit 2
        main(["embed", str(mlm_run)])
    assert e.value.code == 2 and "--text" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_classify_trains_from_csv_and_jsonl(env, capsys, fmt):
    rows = make_reviews(80)
    path = env / f"reviews.{fmt}"
    if fmt == "csv":
        path.write_text(reviews_csv(80), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    rc, out, err = cli(capsys, "train", *TINY[:-1], "--data.task=classify",
                       f"--data.path={path}", "--model.pooling=cls", "--train.steps=4",
                       "--train.eval_every=2", "--train.samples=2", "--out", "run")
    assert rc == 0, err
    assert "classify, 2 labels" in out and "(true: " in out
    assert "val loss" in err and "accuracy" in err  # progress lines go to stderr
    run = env / "run"
    assert json.loads((run / "labels.json").read_text()) == ["negative", "positive"]
    assert json.loads((run / "config.json").read_text())["model"]["n_labels"] == 2
    loaded = attnkit.load(run, device="cpu")
    assert loaded.labels == ["negative", "positive"]
    ids = torch.tensor([encode_text(loaded.tokenizer, "The plot was fun.", 32)])
    assert loaded.model(ids)[0].shape == (1, 2)
    rc, _, _ = cli(capsys, "train", "--resume", "run", "--train.steps=5", "--no-samples")
    assert rc == 0


@pytest.mark.parametrize("extra,message", [
    (["--data.task=classify"], "needs labelled examples"),
    (["--data.task=classify", "--data.path=missing.csv"], "labelled data not found"),
    (["--data.task=classify", "--data.path=bad.csv"], "the header has no 'label' column"),
    (["--data.task=classify", "--data.path=r.csv", "--model.n_labels=3"],
     "model.n_labels=3 but"),
    (["--data.task=mlm", "--model.family=decoder"], "add --model.family=encoder"),
    (["--data.task=mlm", "--data.mlm_probability=0"], "mlm_probability must be in (0, 1)"),
])
def test_task_errors_are_one_line(env, capsys, extra, message):
    (env / "bad.csv").write_text("text,category\nhi,a\n")
    (env / "r.csv").write_text(reviews_csv(20))
    rc, _, err = cli(capsys, "train", *TINY, *extra, "--train.steps=1", "--out", "x")
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err


def test_encoder_recipes_build():
    mlm = config_from_dict(load_recipe("encoder-mlm"))
    assert mlm.model.family == "encoder" and mlm.data.task == "mlm"
    assert (mlm.model.norm_position, mlm.model.pos) == ("post", "rope")
    cls = config_from_dict(load_recipe("encoder-classify"))
    assert cls.data.task == "classify" and cls.model.pooling == "cls"
    assert Path(cls.data.path) == Path("tests/data/reviews.csv")
