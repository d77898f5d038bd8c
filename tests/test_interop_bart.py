"""BART interop, proven against Hugging Face: tiny random ``BartForConditionalGeneration``
models built from a config offline, converted with the production converter both ways."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from safetensors.torch import load_file, save_file  # noqa: E402

import attnkit  # noqa: E402
from attnkit.cli import main  # noqa: E402
from attnkit.config import Seq2SeqConfig  # noqa: E402
from attnkit.data.pairs import source_batch  # noqa: E402
from attnkit.errors import AttnkitError  # noqa: E402
from attnkit.generate.beam import greedy_seq2seq, translate  # noqa: E402
from attnkit.interop import from_hf, to_hf  # noqa: E402
from attnkit.interop.bart import (  # noqa: E402
    POSITIONS,
    from_hf_bart,
    hf_names,
    hf_tensors,
    read_token_ids,
    seq2seq_config_in,
    to_hf_bart,
    token_ids_in,
)
from attnkit.interop.decoder import ConfigReader  # noqa: E402
from attnkit.models import Seq2Seq  # noqa: E402
from attnkit.weights import model_state  # noqa: E402

TOL = dict(atol=1e-4, rtol=0)  # fp32
V = 64


def hf_config(**kw) -> transformers.BartConfig:
    base = dict(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0,
                attention_dropout=0.0, activation_dropout=0.0)
    return transformers.BartConfig(**{**base, **kw})


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter, so norm gains and biases are not 1 and 0 and a mixed-up key
    would show (the final_logits_bias buffer is left at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def hf_bart(path, **kw) -> transformers.BartForConditionalGeneration:
    torch.manual_seed(0)
    hf = perturbed(transformers.BartForConditionalGeneration(hf_config(**kw)))
    hf.save_pretrained(path)
    return hf


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, V, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    src[mask == 0] = 1  # BART's pad id
    tgt = torch.randint(3, V, (3, 9), generator=g)
    tgt[:, 0] = 2  # decoder_start_token_id
    return {"input_ids": src, "attention_mask": mask, "decoder_input_ids": tgt}


def ours_logits(model: Seq2Seq, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(x["decoder_input_ids"], src_ids=x["input_ids"], src_mask=x["attention_mask"])[0]


def hf_logits(hf, x: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return hf(**x).logits


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[:tokens.index(eos)] if eos in tokens else tokens


# ----------------------------------------------------------------------- Hugging Face -> attnkit


@pytest.mark.parametrize("kw", [dict(), dict(activation_function="gelu_new", scale_embedding=True),
                                dict(activation_function="relu")])
def test_logits_match(tmp_path, kw):
    hf = hf_bart(tmp_path, **kw)
    run = from_hf(tmp_path)  # the dispatch by model_type
    ours = run.model
    assert isinstance(ours, Seq2Seq) and ours.cfg.pos == "learned" and ours.cfg.embedding_norm
    assert ours.cfg.scale_embeddings is bool(kw.get("scale_embedding", False))
    assert run.source == tmp_path and run.config.model == ours.cfg
    assert not hasattr(ours, "token_ids") and not hasattr(ours, "tokenizer")  # a plain module
    assert run.token_ids == {"pad": 1, "bos": 0, "eos": 2, "decoder_start": 2, "forced_bos": None,
                              "forced_eos": 2}
    x = inputs()
    diff = (ours_logits(ours, x) - hf_logits(hf, x)).abs().max().item()
    assert diff <= 1e-4, diff


def test_greedy_tokens_match_generate(tmp_path):
    torch.manual_seed(0)
    hf = perturbed(transformers.BartForConditionalGeneration(hf_config()))
    with torch.no_grad():  # a random model ends at once; a weaker EOS row lets it speak first
        hf.model.shared.weight[2] *= 0.5
    hf.save_pretrained(tmp_path)
    run = attnkit.load(tmp_path)
    ours = run.model
    x = inputs()

    def both(eos: int) -> tuple[list[list[int]], list[list[int]]]:
        with torch.no_grad():
            out = hf.generate(x["input_ids"], attention_mask=x["attention_mask"], do_sample=False,
                              num_beams=1, max_new_tokens=32, min_length=0, forced_bos_token_id=None,
                              forced_eos_token_id=None, no_repeat_ngram_size=0, eos_token_id=eos)
        expected = [until_eos(row[1:], eos) for row in out.tolist()]  # row[0]: decoder start
        got = greedy_seq2seq(ours, x["input_ids"], x["attention_mask"],
                             bos_id=run.token_ids["decoder_start"], eos_id=eos, max_new_tokens=32)
        return got, expected

    got, expected = both(hf.config.eos_token_id)
    assert got == expected and [len(r) for r in got] == [32, 32, 32]
    # Again with a token the first row emits at step 10 as EOS: generation stops there.
    got, expected = both(got[0][10])
    assert got == expected and min(map(len, got)) <= 10


#: Ids unlike BART's defaults (and unlike the test tokenizer's <s> 0, <pad> 1, </s> 2), so
#: that ids taken from anywhere but config.json would show.
ODD_IDS = dict(pad_token_id=4, bos_token_id=5, eos_token_id=6, decoder_start_token_id=7,
               forced_eos_token_id=None)


def _word_tokenizer(path) -> None:
    """A tokenizer.json whose specials are <s> 0, <pad> 1, </s> 2 (as BART's)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {**{t: i for i, t in enumerate(specials)}, **{f"w{i}": i for i in range(4, V)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in specials])
    tok.save(str(path / "tokenizer.json"))


def _odd_bart_run(tmp_path, capsys, with_tokenizer: bool, *, loud: bool = False):
    """A tiny BART saved with :data:`ODD_IDS` (and :func:`_word_tokenizer`'s tokenizer.json if
    ``with_tokenizer``), converted with ``attnkit convert``: (hf model, run, convert's stdout).
    ``loud``: noise of std 1 on the weight matrices instead of :func:`perturbed`'s 0.1, so the
    greedy output varies with the source and the start token (a quieter random model repeats
    one token whatever it reads), and a stronger EOS row, so one row ends at EOS."""
    torch.manual_seed(0)
    hf = transformers.BartForConditionalGeneration(hf_config(**ODD_IDS))
    if loud:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in hf.parameters():
                noise = torch.randn(p.shape, generator=g)
                if p.dim() == 2:  # matrices only: noisy norms and biases favour one token again
                    p.add_(noise)
            hf.model.shared.weight[6] *= 2.0
        hf.eval()
    else:
        perturbed(hf)
        with torch.no_grad():  # a random model ends at once; a weaker EOS row lets it speak first
            hf.model.shared.weight[6] *= 0.5
    hf.save_pretrained(tmp_path / "hf")  # config.json, generation_config.json, no tokenizer
    if with_tokenizer:
        _word_tokenizer(tmp_path / "hf")
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(run)]) == 0
    return hf, run, capsys.readouterr().out


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_converted_run_keeps_the_config_ids_and_generates_like_transformers(
        tmp_path, capsys, with_tokenizer):
    hf, run, out = _odd_bart_run(tmp_path, capsys, with_tokenizer)
    assert "token ids kept from config.json: pad 4, bos 5, eos 6, decoder_start 7" in out
    assert ("works on token ids only" in out) is not with_tokenizer

    loaded = attnkit.load(run, device="cpu")
    ours = loaded.model
    assert (loaded.tokenizer is not None) is with_tokenizer
    gen = hf.generation_config
    expected_ids = {"pad": gen.pad_token_id, "bos": gen.bos_token_id, "eos": gen.eos_token_id,
                    "decoder_start": gen.decoder_start_token_id, "forced_bos": None,
                    "forced_eos": None}
    assert loaded.token_ids == read_token_ids(run) == expected_ids
    assert expected_ids["decoder_start"] == 7 and hf.config.pad_token_id == 4

    x = inputs()
    with torch.no_grad():  # transformers' own ids, from the same config
        hf_out = hf.generate(x["input_ids"], attention_mask=x["attention_mask"], do_sample=False,
                             num_beams=1, max_new_tokens=24, min_length=0, no_repeat_ngram_size=0)
    assert hf_out[:, 0].eq(7).all()  # generate starts from decoder_start_token_id
    expected = [until_eos(row[1:], 6) for row in hf_out.tolist()]
    got = greedy_seq2seq(ours, x["input_ids"], x["attention_mask"],
                         bos_id=loaded.token_ids["decoder_start"], eos_id=loaded.token_ids["eos"],
                         max_new_tokens=24)
    assert got == expected and all(got)

    assert main(["convert", str(run), "--to-hf", str(tmp_path / "back")]) == 0
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert {k: back[k] for k in ODD_IDS} == ODD_IDS  # and export writes them back


class _IdsTokenizer:
    """``tok`` whose ``decode`` shows the ids themselves, so outputs compare id for id (text
    drops special tokens); with ``framed``, ``encode`` already adds BART's ``bos ... eos``."""

    def __init__(self, tok, framed: bool = False) -> None:
        self.tok, self.framed, self.special_tokens = tok, framed, tok.special_tokens

    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(text)
        return [ODD_IDS["bos_token_id"], *ids, ODD_IDS["eos_token_id"]] if self.framed else ids

    def decode(self, ids: list[int]) -> str:
        return str(list(ids))


def test_translate_decodes_a_converted_run_like_generate(tmp_path, capsys):
    hf, run, _ = _odd_bart_run(tmp_path, capsys, with_tokenizer=True, loud=True)
    loaded = attnkit.load(run, device="cpu")
    tok = loaded.tokenizer
    g = torch.Generator().manual_seed(2)
    texts = [" ".join(f"w{i}" for i in torch.randint(8, V, (n,), generator=g).tolist())
             for n in (9, 5, 2)]

    def generate(sources: list[list[int]], **kw) -> list[list[int]]:
        src, mask = source_batch(sources, pad_id=4)
        with torch.no_grad():
            out = hf.generate(src, attention_mask=mask.long(), do_sample=False, num_beams=1,
                              max_new_tokens=24, min_length=0, forced_bos_token_id=None,
                              forced_eos_token_id=None, no_repeat_ngram_size=0, **kw)
        assert out[:, 0].eq(kw.get("decoder_start_token_id", 7)).all()  # row[0]: the start
        return [until_eos(row[1:], 6) for row in out.tolist()]

    # The BART way: <s> text </s>, with the config's ids (bos 5, eos 6; the tokenizer's are 0, 2).
    expected = generate([[5, *tok.encode(t), 6] for t in texts])
    assert all(expected) and sorted(map(len, expected)) == [18, 24, 24]  # one ends at EOS
    # This model tells the framing and the start token apart, so getting either wrong shows.
    assert generate([[*tok.encode(t), 6] for t in texts]) != expected
    assert generate([[5, *tok.encode(t), 6] for t in texts], decoder_start_token_id=0) != expected

    def ours_out(tokenizer=None) -> list[str]:
        return translate(loaded.model, texts, tokenizer=tokenizer or tok,
                         token_ids=loaded.token_ids, beam_size=1, max_new_tokens=24)

    assert ours_out(_IdsTokenizer(tok)) == [str(r) for r in expected]
    assert ours_out(_IdsTokenizer(tok, framed=True)) == [str(r) for r in expected]  # not doubled
    assert ours_out() == [tok.decode(r) for r in expected]
    argv = ["translate", str(run), *[a for t in texts for a in ("--text", t)], "--max-new-tokens", "24"]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == [tok.decode(r) for r in expected]


def test_generation_config_ids_win_and_bad_ids_are_refused(tmp_path):
    data = hf_config().to_dict()
    assert token_ids_in(data, {"decoder_start_token_id": 0})["decoder_start"] == 0
    assert token_ids_in(data, {"decoder_start_token_id": None})["decoder_start"] == 2
    with pytest.raises(AttnkitError, match=r"config.json: eos_token_id=64 is not a token id"):
        token_ids_in({**data, "eos_token_id": V}, None, tmp_path / "config.json")
    hf_bart(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"forced_bos_token_id": [0]}')
    with pytest.raises(AttnkitError, match=r"generation_config.json: forced_bos_token_id=\[0\] is "
                                           r"not a token id"):
        from_hf_bart(tmp_path)


def test_id_refusals_are_one_documented_line(tmp_path, capsys):
    from test_errors import error_line

    hf_bart(tmp_path / "hf")
    folder, run = tmp_path / "hf", str(tmp_path / "run")
    config = json.loads((folder / "config.json").read_text())
    (folder / "generation_config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": 99}))

    def refused(*argv: str, words: str) -> None:
        capsys.readouterr()
        assert main(list(argv)) == 2
        error_line(capsys.readouterr().err, words)

    refused("convert", "--from-hf", str(folder), "--out", run, words="eos_token_id=99 is not a token id")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text('{"forced_bos_token_id": [0]}')
    refused("convert", "--from-hf", str(folder), "--out", run,
            words="generation_config.json: forced_bos_token_id=[0] is not a token id")
    (folder / "generation_config.json").write_text("[2]")
    refused("convert", "--from-hf", str(folder), "--out", run, words="is not a JSON object")
    (folder / "generation_config.json").unlink()
    assert main(["convert", "--from-hf", str(folder), "--out", run]) == 0
    refused("translate", run, "--text", "hi", words="has no tokenizer.json, so text cannot be encoded")
    (tmp_path / "run" / "token_ids.json").write_text('{"eos": "two"}')
    refused("translate", run, "--text", "hi", words="token_ids.json is not a map of token names")


def test_import_export_import_is_bit_identical(tmp_path):
    hf_bart(tmp_path / "hf")
    original = load_file(str(tmp_path / "hf" / "model.safetensors"))
    first = from_hf_bart(tmp_path / "hf")
    to_hf(first, tmp_path / "out")  # the dispatch by family
    exported = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(exported) == set(original)
    for k, t in original.items():
        if k in POSITIONS:  # rows 0-1 are BART's offset, never read; exported as zeros
            assert torch.equal(exported[k][2:], t[2:]) and not exported[k][:2].any(), k
        else:
            assert torch.equal(exported[k], t), k
    second = from_hf_bart(tmp_path / "out")
    a, b = model_state(first.model), model_state(second.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["decoder_start_token_id"] == 2 and config["pad_token_id"] == 1


def test_key_map_covers_every_tensor_once():
    model = Seq2Seq(bart_config(vocab_size=20, d_model=16, n_heads=2, n_encoder_layers=3,
                                n_decoder_layers=2))
    assert sorted(hf_tensors(model)) == sorted([*hf_names(3, 2), "final_logits_bias"])
    assert len(set(hf_names(3, 2))) == len(hf_names(3, 2)) == len(model_state(model))


# ----------------------------------------------------------------------- attnkit -> Hugging Face


def bart_config(**kw) -> Seq2SeqConfig:
    base = dict(vocab_size=V, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=3,
                ffn_hidden=48, context_length=40, pos="learned", norm="layernorm",
                norm_position="post", ffn="gelu", bias=True, embedding_norm=True,
                share_embeddings=True, scale_embeddings=True, norm_eps=1e-5, dropout=0.0)
    return Seq2SeqConfig(**{**base, **kw})


@pytest.mark.parametrize("kw", [dict(), dict(ffn="gelu_tanh", scale_embeddings=False)])
def test_export_loads_with_stock_transformers(tmp_path, kw):
    torch.manual_seed(0)
    ours = perturbed(Seq2Seq(bart_config(**kw)))
    assert to_hf_bart(ours, tmp_path) == "BartForConditionalGeneration"
    hf = transformers.BartForConditionalGeneration.from_pretrained(tmp_path).eval()
    x = inputs()
    torch.testing.assert_close(hf_logits(hf, x), ours_logits(ours, x), **TOL)


@pytest.mark.parametrize("knob,message", [
    (dict(pos="sinusoidal"), "cannot export model.pos=sinusoidal as Hugging Face BART"),
    (dict(norm_position="pre"), "model.norm_position=pre"),
    (dict(embedding_norm=False), "model.embedding_norm=False"),
    (dict(share_embeddings=False), "model.share_embeddings=False"),
    (dict(ffn="swiglu"), "model.ffn=swiglu"),
    (dict(n_kv_heads=2), "model.n_kv_heads=2"),
    (dict(norm_eps=1e-6), "model.norm_eps=1e-06"),
])
def test_export_refuses_what_bart_cannot_express(tmp_path, knob, message):
    with pytest.raises(AttnkitError, match=message):
        to_hf_bart(Seq2Seq(bart_config(**knob)), tmp_path)


# ----------------------------------------------------------------------- CLI and errors


def test_cli_round_trip(tmp_path, capsys):
    hf = hf_bart(tmp_path / "hf")
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert "seq2seq" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "run"), "--to-hf", str(tmp_path / "back")]) == 0
    back = transformers.BartForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    x = inputs()
    torch.testing.assert_close(hf_logits(back, x), hf_logits(hf, x), **TOL)


def _one_line_exit_2(argv, capsys, message):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_nonzero_final_logits_bias_is_refused(tmp_path, capsys):
    hf_bart(tmp_path / "hf")
    path = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(path))
    tensors["final_logits_bias"][0, 5] = 0.5
    save_file(tensors, str(path), metadata={"format": "pt"})
    _one_line_exit_2(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "r")],
                     capsys, "model.safetensors: tensor 'final_logits_bias' is not all zeros")
    assert not (tmp_path / "r").exists()


def test_different_head_counts_are_refused(tmp_path, capsys):
    torch.manual_seed(0)
    transformers.BartForConditionalGeneration(hf_config(decoder_attention_heads=2)).save_pretrained(
        tmp_path / "hf")
    _one_line_exit_2(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "r")],
                     capsys, "config.json: decoder_attention_heads=2 is not supported")


def test_config_errors_are_one_line(tmp_path):
    cfg = hf_config().to_dict()

    def read(**changes):
        data = {k: v for k, v in {**cfg, **changes}.items() if v is not None}
        return seq2seq_config_in(ConfigReader(data, tmp_path / "config.json"))

    assert read().n_heads == 4
    with pytest.raises(AttnkitError, match="activation_function='silu' is not supported"):
        read(activation_function="silu")
    with pytest.raises(AttnkitError, match="decoder_ffn_dim=32 is not supported"):
        read(decoder_ffn_dim=32)
    with pytest.raises(AttnkitError, match="tie_word_embeddings=False is not supported"):
        read(tie_word_embeddings=False)
    with pytest.raises(AttnkitError, match="architectures 'BartForSequenceClassification'"):
        read(architectures=["BartForSequenceClassification"])


def test_untied_copy_and_extra_tensor_are_refused(tmp_path):
    hf_bart(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    tensors["lm_head.weight"] = tensors["model.shared.weight"] + 1
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(AttnkitError, match="'lm_head.weight' differs from 'model.shared.weight'"):
        from_hf_bart(tmp_path)
    tensors["lm_head.weight"] = tensors["model.shared.weight"].clone()  # an old tied copy: fine
    save_file(tensors, str(path), metadata={"format": "pt"})
    from_hf_bart(tmp_path)
    tensors["model.encoder.layernorm.weight"] = torch.ones(32)
    save_file(tensors, str(path), metadata={"format": "pt"})
    with pytest.raises(AttnkitError, match="unexpected tensor 'model.encoder.layernorm.weight'"):
        from_hf_bart(tmp_path)
