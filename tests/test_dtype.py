"""Half-precision inference: ``attnkit.load(..., dtype=)``, ``sample/serve --dtype``."""

import pytest
import torch
import torch.nn.functional as F
from test_cli import cli

import attnkit
from attnkit import devices
from attnkit.backends import accelerate, attention, onednn
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
    run = attnkit.load(small_run, dtype="bf16")
    model = run.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.new_cache(1).k[0].dtype == torch.bfloat16
    prompt = run.tokenizer.encode("the ")
    ids = list(generate_ids(model, prompt, 10, temperature=0))
    sampled = list(generate_ids(model, prompt, 10, temperature=1.0, top_p=0.9, seed=1))
    assert len(ids) == len(sampled) == 10
    assert all(0 <= i < model.cfg.vocab_size for i in ids + sampled)
    # the cached decode matches a full recompute in the same precision (greedy, short prefix)
    with torch.inference_mode():
        full, _ = model(torch.tensor([prompt + ids[:1]]))
    assert int(full[0, -1].float().argmax()) == ids[1]


def test_sample_dtype_flag(small_run, capsys, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    rc, out, err = cli(capsys, "sample", small_run, "--prompt", "the ", "--max-new-tokens", "8",
                       "--dtype", "bf16", "--seed", "1")
    assert rc == 0 and out.startswith("the ") and err == ""


def test_bf16_on_a_cpu_without_it_says_so(small_run, capsys, monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
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
    from test_errors import error_line

    error_line(err)  # and it is the catalogue's


def test_native_bf16_reads_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    real_path = devices.Path

    def fake(p, *a):
        return real_path(info) if str(p) == "/proc/cpuinfo" else real_path(p, *a)

    monkeypatch.setattr(devices, "Path", fake)
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16\n")
    assert devices.cpu_has_native_bf16()
    info.write_text("processor : 0\nflags : fpu sse avx2 fma\n")
    assert not devices.cpu_has_native_bf16()


def packs(monkeypatch, module) -> list[torch.dtype]:
    """Record the dtype of every weight ``module`` packs for oneDNN."""
    calls = []
    real = module.pack
    monkeypatch.setattr(module, "pack", lambda w: calls.append(w.dtype) or real(w))
    return calls


def test_output_head_takes_the_plain_path_in_fp16(monkeypatch):
    torch.manual_seed(0)
    head = accelerate(OutputHead(256, 1000, bias=False).to(torch.float16), purpose="decode",
                      backend="onednn")
    packed = packs(monkeypatch, onednn)
    x = torch.randn(1, 256, dtype=torch.float16)
    with torch.inference_mode():
        y = head(x)
    assert packed == []  # no packed copy was made
    assert torch.equal(y, F.linear(x, head.weight))


@pytest.mark.parametrize("native", [True, False])
def test_bf16_decodes_through_a_packed_weight_where_the_cpu_has_native_bf16(monkeypatch, native):
    """A CPU with native bf16 decodes bf16 through oneDNN-packed weights (about 1.7x the
    bandwidth of PyTorch's bf16 product), with the same logits; one without keeps the plain
    path."""
    if native and not onednn.PACKING:
        pytest.skip("this torch has no oneDNN packing")
    if native and not devices.cpu_has_native_bf16():
        pytest.skip("oneDNN packs bf16 weights only on a CPU with native bf16 (AVX512-BF16 or AMX)")
    dtypes = (torch.float32, torch.bfloat16) if native else (torch.float32,)
    monkeypatch.setattr(onednn, "PACKED_DTYPES", dtypes)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1000, d_model=384, n_heads=6, n_layers=1, context_length=32)
    model = accelerate(Decoder(cfg).to(torch.bfloat16).eval(), purpose="decode",
                       backend="onednn")
    packed, stacked = packs(monkeypatch, onednn), packs(monkeypatch, attention)
    ids = torch.randint(0, 1000, (1, 5))
    with torch.inference_mode():
        logits, _ = model(ids[:, -1:])
    # the output layer and the other large weights, and q/k/v stacked, or none of them
    assert packed == ([torch.bfloat16] * 4 if native else [])
    assert stacked == ([torch.bfloat16] if native else [])
    with torch.no_grad():  # outside inference mode: PyTorch's own bf16 product
        reference, _ = model(ids[:, -1:])
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits, reference)


def test_sample_compile_flag_gives_the_eager_text(small_run, capsys):
    args = ["sample", small_run, "--prompt", "the ", "--max-new-tokens", "12", "--temperature", "0"]
    rc, eager, _ = cli(capsys, *args)
    rc2, compiled, err = cli(capsys, *args, "--compile")
    assert rc == rc2 == 0 and compiled == eager and err == ""


def test_compile_refuses_a_model_it_cannot_compile():
    from attnkit.config import LSTMConfig
    from attnkit.errors import AttnkitError
    from attnkit.models.lstm import LSTMLanguageModel

    lstm = LSTMLanguageModel(LSTMConfig(vocab_size=50, d_model=16, n_layers=1))
    with pytest.raises(AttnkitError, match="compiled decoding is for Transformer decoders"):
        list(generate_ids(lstm, [1, 2], 3, compile=True))
