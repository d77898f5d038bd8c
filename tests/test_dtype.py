"""Half-precision inference: ``attnkit.load(..., dtype=)``, ``sample/serve --dtype``."""

import pytest
import torch
import torch.nn.functional as F
from test_cli import cli

import attnkit
from attnkit import checkpoint
from attnkit.config import ModelConfig, expand_presets
from attnkit.generate import generate_ids
from attnkit.models import Decoder
from attnkit.nn.head import OutputHead


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_bf16_logits_follow_fp32(style):
    torch.manual_seed(0)
    cfg = ModelConfig(**expand_presets({"size": "tiny", "style": style, "vocab_size": 300}))
    model = Decoder(cfg).eval()
    x = torch.randint(0, 300, (2, 20))
    with torch.inference_mode():
        ref, _ = model(x)
        half, _ = model.to(torch.bfloat16)(x)
    assert half.dtype == torch.bfloat16
    err = (half.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, err  # bf16 keeps ~3 significant digits


def test_load_in_bf16_decodes_with_the_cache(small_run):
    model = attnkit.load(small_run, dtype="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.new_cache(1).k[0].dtype == torch.bfloat16
    prompt = model.tokenizer.encode("the ")
    ids = list(generate_ids(model, prompt, 10, temperature=0))
    sampled = list(generate_ids(model, prompt, 10, temperature=1.0, top_p=0.9, seed=1))
    assert len(ids) == len(sampled) == 10
    assert all(0 <= i < model.cfg.vocab_size for i in ids + sampled)
    # the cached decode matches a full recompute in the same precision (greedy, short prefix)
    with torch.inference_mode():
        full, _ = model(torch.tensor([prompt + ids[:1]]))
    assert int(full[0, -1].float().argmax()) == ids[1]


def test_sample_dtype_flag(small_run, capsys, monkeypatch):
    monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: True)
    rc, out, err = cli(capsys, "sample", small_run, "--prompt", "the ", "--max-new-tokens", "8",
                       "--dtype", "bf16", "--seed", "1")
    assert rc == 0 and out.startswith("the ") and err == ""


def test_bf16_on_a_cpu_without_it_says_so(small_run, capsys, monkeypatch):
    monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: False)
    rc, out, err = cli(capsys, "sample", small_run, "--prompt", "a", "--max-new-tokens", "2",
                       "--dtype", "bf16")
    assert rc == 0
    assert err.strip() == ("note: this CPU has no native bf16 matrix products, so --dtype bf16 "
                           "is slower than fp32 here (use --dtype fp32)")
    rc, _, err = cli(capsys, "sample", small_run, "--prompt", "a", "--max-new-tokens", "2")
    assert rc == 0 and err == ""  # fp32: no note


def test_unknown_dtype_is_one_line(small_run, capsys):
    rc, out, err = cli(capsys, "sample", small_run, "--dtype", "int3")
    assert rc == 2 and out == ""
    assert err.strip() == "error: unknown dtype 'int3' for --dtype (use fp32, bf16 or fp16)"


def test_native_bf16_reads_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    real_path = checkpoint.Path

    def fake(p, *a):
        return real_path(info) if str(p) == "/proc/cpuinfo" else real_path(p, *a)

    monkeypatch.setattr(checkpoint, "Path", fake)
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16\n")
    assert checkpoint.cpu_has_native_bf16()
    info.write_text("processor : 0\nflags : fpu sse avx2 fma\n")
    assert not checkpoint.cpu_has_native_bf16()


def test_output_head_takes_the_plain_path_in_half_precision():
    torch.manual_seed(0)
    head = OutputHead(256, 1000, bias=False).to(torch.bfloat16)
    x = torch.randn(1, 256, dtype=torch.bfloat16)
    with torch.inference_mode():
        y = head(x)
    assert head._packed is None  # no fp32-only packed copy was made
    assert torch.equal(y, F.linear(x, head.weight))


def test_sample_compile_flag_gives_the_eager_text(small_run, capsys):
    args = ["sample", small_run, "--prompt", "the ", "--max-new-tokens", "12", "--temperature", "0"]
    rc, eager, _ = cli(capsys, *args)
    rc2, compiled, err = cli(capsys, *args, "--compile")
    assert rc == rc2 == 0 and compiled == eager and err == ""


def test_compile_refuses_a_model_it_cannot_compile():
    from attnkit.errors import AttnkitError
    from attnkit.generate import compiled_step
    from attnkit.models.lstm import LSTMLanguageModel

    lstm = LSTMLanguageModel(ModelConfig(family="lstm", vocab_size=50, d_model=16, n_layers=1))
    with pytest.raises(AttnkitError, match="compiled decoding is for Transformer decoders"):
        compiled_step(lstm)
