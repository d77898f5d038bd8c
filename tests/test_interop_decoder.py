"""Hugging Face interop for the decoder family, proven against transformers itself.

Tiny random GPT-2 and Llama models are built from a config (offline), saved
with ``save_pretrained`` and imported with the production converter; logits
must agree to 1e-4 in fp32 and greedy decoding must pick the same 32 tokens.
attnkit models exported with ``to_hf`` must load in stock
``AutoModelForCausalLM`` and agree the same way.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from attnkit.cli import main  # noqa: E402
from attnkit.config import config_from_dict  # noqa: E402
from attnkit.errors import AttnkitError  # noqa: E402
from attnkit.generate import generate_ids  # noqa: E402
from attnkit.interop import from_hf, is_hf_dir, load, to_hf  # noqa: E402
from attnkit.interop.keymap import GPT2, LLAMA, TRANSFORMS, Shapes  # noqa: E402
from attnkit.models import build_model  # noqa: E402
from attnkit.tokenizers import train_tokenizer  # noqa: E402
from attnkit.weights import model_state  # noqa: E402

VOCAB = 96
TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread_quiet():
    """Tiny models: one thread is fastest, and far faster than threads fighting over a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    yield
    torch.set_num_threads(threads)


def _scramble(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random and far from its init (norm weights around 1, biases nonzero),
    so a tensor mapped to the wrong place cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_weight = p.ndim == 1 and name.endswith("weight")
            noise = torch.randn(p.shape, generator=g) * (0.1 if is_norm_weight else 0.25)
            p.copy_(noise + (1.0 if is_norm_weight else 0.0))
    return model.eval()


def _gpt2(tmp_path: Path, name: str = "gpt2", **overrides) -> tuple[Path, torch.nn.Module]:
    kw = dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
              bos_token_id=None, eos_token_id=None)
    kw.update(overrides)
    hf = _scramble(transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw)))
    hf.save_pretrained(tmp_path / name)
    return tmp_path / name, hf


def _llama(tmp_path: Path, name: str = "llama", **overrides) -> tuple[Path, torch.nn.Module]:
    kw = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rope_theta=1000.0, bos_token_id=None, eos_token_id=None)
    kw.update(overrides)
    hf = _scramble(transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)))
    hf.save_pretrained(tmp_path / name)
    return tmp_path / name, hf


def _ids(batch: int = 2, length: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _assert_same_logits(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    ids = _ids()
    a, _ = ours(ids)
    b = theirs(ids).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= TOL
    assert b.abs().max().item() > 1.0  # the comparison is not between two near-zero tensors


@torch.no_grad()
def _assert_same_greedy_tokens(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    prompt = _ids(1, 8, seed=2)
    theirs_ids = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                                 min_new_tokens=32, do_sample=False, pad_token_id=0)
    ours_ids = list(generate_ids(ours, prompt[0].tolist(), 32, temperature=0))
    assert ours_ids == theirs_ids[0, 8:].tolist()


# --- import: Hugging Face -> attnkit ----------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {},  # GPT-2 as published: gelu_new (tanh), tied embeddings
    {"activation_function": "gelu", "tie_word_embeddings": False, "n_inner": 48},
], ids=["tied-gelu_new", "untied-gelu-n_inner"])
def test_gpt2_import_matches_transformers(tmp_path, overrides) -> None:
    folder, hf = _gpt2(tmp_path, **overrides)
    run = from_hf(folder)
    model = run.model
    expected_ffn = "gelu" if overrides else "gelu_tanh"
    assert model.cfg.ffn == expected_ffn and model.cfg.pos == "learned"
    assert model.cfg.tie_embeddings == (not overrides)
    assert run.tokenizer is None and run.source == folder and run.config.model == model.cfg
    _assert_same_logits(model, hf)
    _assert_same_greedy_tokens(model, hf)


@pytest.mark.parametrize("overrides", [
    {},  # GQA: 4 query heads share 2 kv heads; untied, no biases
    {"tie_word_embeddings": True, "num_key_value_heads": 1, "attention_bias": True,
     "mlp_bias": True, "hidden_act": "gelu"},  # tied, MQA, biases, GeGLU
], ids=["gqa", "tied-mqa-bias-gelu"])
def test_llama_import_matches_transformers(tmp_path, overrides) -> None:
    folder, hf = _llama(tmp_path, **overrides)
    model = from_hf(folder).model
    cfg = model.cfg
    assert (cfg.pos, cfg.norm, cfg.rope_theta) == ("rope", "rmsnorm", 1000.0)
    assert cfg.n_kv_heads == overrides.get("num_key_value_heads", 2)
    assert cfg.tie_embeddings == bool(overrides)
    # RoPE layout: attnkit rotates halves like HF Llama, so q/k are copied unpermuted.
    hf_q = hf.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(model.blocks[0].attn.q_proj.weight, hf_q)
    _assert_same_logits(model, hf)
    _assert_same_greedy_tokens(model, hf)


def test_original_gpt2_keys_without_the_transformer_prefix(tmp_path) -> None:
    folder, hf = _gpt2(tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, path,
              metadata={"format": "pt"})
    _assert_same_logits(from_hf(folder).model, hf)


def test_sharded_checkpoint(tmp_path) -> None:
    _, hf = _llama(tmp_path)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    _assert_same_logits(from_hf(tmp_path / "sharded").model, hf)


def test_bf16_checkpoint_is_upcast_exactly(tmp_path) -> None:
    _, hf = _gpt2(tmp_path)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    model = from_hf(tmp_path / "bf16").model
    assert model.tok_emb.weight.dtype == torch.float32
    assert torch.equal(model.tok_emb.weight, hf.transformer.wte.weight.float())


# --- export: attnkit -> Hugging Face ----------------------------------------------------

def _attnkit_model(**model_keys) -> torch.nn.Module:
    cfg = config_from_dict({"model": {"size": "tiny", "vocab_size": VOCAB, "context_length": 64,
                                      **model_keys}}).model
    return _scramble(build_model(cfg), seed=3)


@pytest.mark.parametrize("model_keys", [
    {"style": "llama"},
    {"style": "llama", "tie_embeddings": True, "n_kv_heads": 1, "ffn": "geglu", "bias": True,
     "rope_theta": 500.0},
    {"style": "gpt2"},  # exact GELU
    {"style": "gpt2", "ffn": "gelu_tanh", "tie_embeddings": False, "ffn_hidden": 80},
    {"style": "gpt2", "ffn": "relu"},
], ids=["llama", "llama-tied-mqa-bias-geglu", "gpt2", "gpt2-gelu_tanh-untied", "gpt2-relu"])
def test_export_loads_in_stock_transformers(tmp_path, model_keys) -> None:
    model = _attnkit_model(**model_keys)
    to_hf(model, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] in ("gpt2", "llama") and len(config["architectures"]) == 1
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == config["architectures"][0]
    _assert_same_logits(model, hf)
    _assert_same_greedy_tokens(model, hf)


@pytest.mark.parametrize("make", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_import_export_import_is_bit_identical(tmp_path, make) -> None:
    folder, _ = make(tmp_path)
    first = from_hf(folder)
    to_hf(first, tmp_path / "again")
    second = from_hf(tmp_path / "again")
    a, b = model_state(first.model), model_state(second.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The exported file holds exactly the tensors transformers saved, bit for bit.
    saved, exported = load_file(folder / "model.safetensors"), load_file(tmp_path / "again" /
                                                                          "model.safetensors")
    assert saved.keys() == exported.keys()
    assert all(torch.equal(saved[k], exported[k]) for k in saved)


@pytest.mark.parametrize("model_keys, match", [
    ({"style": "gpt2", "pos": "alibi"}, "model.pos=alibi"),
    ({"style": "gpt2", "norm_position": "post"}, "model.norm_position=post"),
    ({"style": "original"}, "model.pos=sinusoidal"),
    ({"style": "gpt2", "n_kv_heads": 2}, "model.n_kv_heads=2"),
    ({"style": "llama", "ffn": "gelu"}, "model.ffn=gelu"),
    ({"style": "llama", "norm": "layernorm"}, "model.norm=layernorm"),
])
def test_export_refuses_what_hf_cannot_compute(tmp_path, model_keys, match) -> None:
    with pytest.raises(AttnkitError, match=match) as exc:
        to_hf(_attnkit_model(**model_keys), tmp_path / "hf")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "hf").exists()


def test_export_refuses_a_non_empty_folder(tmp_path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(AttnkitError, match="not empty"):
        to_hf(_attnkit_model(style="llama"), tmp_path / "hf")
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary folder left behind


# --- the command line and attnkit.load --------------------------------------------------

def test_cli_round_trip_with_tokenizer(tmp_path, capsys) -> None:
    text = "the cat sat on the mat. " * 40
    tok = train_tokenizer("bpe", text, vocab_size=300, specials=("eos",))
    folder, hf = _gpt2(tmp_path, vocab_size=tok.vocab_size)
    tok.save(folder / "tokenizer.json")
    assert is_hf_dir(folder)

    assert main(["convert", "--from-hf", str(folder), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000000"
    for name in ("config.json", "tokenizer.json", "checkpoints/step-000000/model.safetensors",
                 "checkpoints/step-000000/config.json"):
        assert (run / name).is_file(), name
    assert not is_hf_dir(run)
    config = json.loads((run / "config.json").read_text())
    assert config_from_dict(config).model.ffn == "gelu_tanh"

    loaded = load(run, device="cpu")
    model = loaded.model
    assert loaded.tokenizer.kind == "bpe" and loaded.tokenizer.special_tokens == tok.special_tokens
    _assert_same_logits(model, hf)
    assert main(["sample", str(run), "--prompt", "the cat", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0

    assert main(["convert", str(run), "--to-hf", str(tmp_path / "back")]) == 0
    back = tmp_path / "back"
    assert {p.name for p in back.iterdir()} == {"config.json", "model.safetensors",
                                               "tokenizer.json", "tokenizer_config.json"}
    config = json.loads((back / "config.json").read_text())
    assert config["eos_token_id"] == tok.special_tokens["eos"]
    _assert_same_logits(model, transformers.AutoModelForCausalLM.from_pretrained(back).eval())
    hf_tok = transformers.AutoTokenizer.from_pretrained(back)
    assert hf_tok.encode("the cat sat") == tok.encode("the cat sat")
    assert hf_tok.eos_token == "<|eos|>"
    out = capsys.readouterr().out
    assert "converted" in out and "exported" in out


def test_cli_round_trip_without_tokenizer(tmp_path, capsys) -> None:
    folder, hf = _llama(tmp_path)
    assert main(["convert", "--from-hf", str(folder), "--out", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "run" / "tokenizer.json").exists()
    assert "no tokenizer" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "run"), "--to-hf", str(tmp_path / "back")]) == 0
    assert {p.name for p in (tmp_path / "back").iterdir()} == {"config.json", "model.safetensors"}
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    _assert_same_logits(from_hf(folder).model, back)


def test_load_reads_a_hugging_face_folder_directly(tmp_path) -> None:
    folder, hf = _llama(tmp_path)
    run = load(folder, device="cpu")
    assert not run.model.training and run.tokenizer is None and run.source == folder
    _assert_same_logits(run.model, hf)


def test_gpt2_tokenizer_travels_with_the_model(tmp_path) -> None:
    if __import__("importlib").util.find_spec("whisper") is None:
        pytest.skip("openai-whisper (GPT-2's vocabulary) is not installed")
    folder, _ = _gpt2(tmp_path, vocab_size=50257, n_layer=1)
    train_tokenizer("gpt2", "").save(folder / "tokenizer.json")
    run = from_hf(folder)
    assert run.tokenizer.kind == "gpt2" and run.config.data.tokenizer == "gpt2"
    to_hf(run, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == 50256
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf_tok.encode("Hello world") == [15496, 995]


# --- errors: one line, exit code 2 ------------------------------------------------------

def _convert_error(capsys, tmp_path, folder: Path) -> str:
    rc = main(["convert", "--from-hf", str(folder), "--out", str(tmp_path / "run-out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "run-out").exists()
    return err


def _edit_config(folder: Path, **changes) -> None:
    data = json.loads((folder / "config.json").read_text())
    data.update(changes)
    (folder / "config.json").write_text(json.dumps(data))


def test_error_missing_config(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    err = _convert_error(capsys, tmp_path, tmp_path / "empty")
    assert "has no config.json" in err


@pytest.mark.parametrize("changes, words", [
    ({"model_type": "t5"}, ["model_type 't5' is not supported", "gpt2, llama"]),
    ({"model_type": None}, ["model_type"]),
    ({"architectures": ["GPT2ForSequenceClassification"]}, ["GPT2ForSequenceClassification"]),
    ({"activation_function": "swish"}, ["activation_function='swish'"]),
    ({"n_embd": "32"}, ["n_embd='32' must be int"]),
    ({"n_head": 5}, ["config.json", "not divisible"]),
])
def test_error_bad_gpt2_config(tmp_path, capsys, changes, words) -> None:
    folder, _ = _gpt2(tmp_path)
    _edit_config(folder, **changes)
    err = _convert_error(capsys, tmp_path, folder)
    assert all(w in err for w in words), err


@pytest.mark.parametrize("changes, key", [
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_parameters"),
    ({"head_dim": 16}, "head_dim"),
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
])
def test_error_llama_config_attnkit_cannot_represent(tmp_path, capsys, changes, key) -> None:
    folder, _ = _llama(tmp_path)
    _edit_config(folder, **changes)
    err = _convert_error(capsys, tmp_path, folder)
    assert str(folder / "config.json") in err and f"{key}=" in err


def test_error_missing_tensor_names_file_and_key(tmp_path, capsys) -> None:
    folder, _ = _llama(tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    err = _convert_error(capsys, tmp_path, folder)
    assert str(path) in err and "'model.layers.1.mlp.up_proj.weight'" in err


def test_error_truncated_weights(tmp_path, capsys) -> None:
    folder, _ = _gpt2(tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    err = _convert_error(capsys, tmp_path, folder)
    assert str(path) in err and "truncated" in err


def test_error_shape_and_extra_tensor(tmp_path, capsys) -> None:
    folder, _ = _gpt2(tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    tensors["transformer.h.0.mlp.extra.weight"] = torch.zeros(2)
    save_file(tensors, path, metadata={"format": "pt"})
    assert "unexpected tensor 'transformer.h.0.mlp.extra.weight'" in \
        _convert_error(capsys, tmp_path, folder)
    del tensors["transformer.h.0.mlp.extra.weight"]
    tensors["transformer.wpe.weight"] = torch.zeros(10, 32)
    save_file(tensors, path, metadata={"format": "pt"})
    assert "'transformer.wpe.weight' has shape (10, 32)" in _convert_error(capsys, tmp_path, folder)


def test_error_pickle_only_folder_is_refused(tmp_path, capsys) -> None:
    folder, _ = _gpt2(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    assert "never pickles" in _convert_error(capsys, tmp_path, folder)


def test_error_output_exists(tmp_path, capsys) -> None:
    folder, _ = _gpt2(tmp_path)
    (tmp_path / "run-out").mkdir()
    (tmp_path / "run-out" / "x").write_text("x")
    assert main(["convert", "--from-hf", str(folder), "--out", str(tmp_path / "run-out")]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["convert"], ["convert", "--from-hf", "x"],
                                  ["convert", "--to-hf", "x"], ["convert", "run", "--out", "x"]])
def test_error_usage(capsys, argv) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "usage:" in err


# --- the key maps -----------------------------------------------------------------------

def test_transforms_invert() -> None:
    shapes = Shapes(n_heads=4, n_kv_heads=2, head_size=8)
    fused = torch.randn(32 + 2 * 16, 32)
    for name, (forward, inverse) in TRANSFORMS.items():
        if name == "split_qkv":
            parts = forward([fused], shapes)
            assert [p.shape[0] for p in parts] == [32, 16, 16]
            assert torch.equal(inverse(parts, shapes)[0], fused)
        elif name == "flatten_patches":  # a ViT patch convolution (D, C, P, P)
            conv, vision = torch.randn(8, 3, 2, 2), shapes._replace(patch_size=2)
            (flat,) = forward([conv], vision)
            assert flat.shape == (8, 12) and torch.equal(inverse([flat], vision)[0], conv)
        else:
            assert torch.equal(inverse(forward([fused], shapes), shapes)[0], fused)


@pytest.mark.parametrize("keymap", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_each_name_appears_once(keymap) -> None:
    rows = keymap.rows(n_layers=3)
    theirs = [r.theirs for r in rows]
    ours = [o for r in rows for o in r.ours]
    assert len(set(theirs)) == len(theirs) and len(set(ours)) == len(ours)


def test_interop_never_imports_transformers() -> None:
    for path in Path(__import__("attnkit.interop").interop.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "transformers" for n in names), path
