"""StaticKVCache and the compiled decode step give what the growing KVCache gives."""

import pytest
import torch

from attnkit.config import ModelConfig
from attnkit.generate import generate_ids
from attnkit.models import Decoder
from attnkit.nn.kv_cache import StaticKVCache


def decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, d_model=32, n_heads=4, n_layers=2, context_length=24, dropout=0.0)
    return Decoder(ModelConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("kw", [{}, {"pos": "rope", "norm": "rmsnorm", "ffn": "swiglu",
                                     "n_kv_heads": 2}, {"pos": "alibi"},
                                {"pos": "sinusoidal"}])
def test_static_cache_decodes_like_the_growing_cache(kw):
    model = decoder(**kw)
    cfg = model.cfg
    static = StaticKVCache(cfg.n_layers, 1, cfg.n_kv_heads, cfg.head_size, cfg.context_length)
    growing = model.new_cache(1)
    ids = torch.randint(0, 97, (1, 5))
    with torch.inference_mode():
        a, _ = model(ids, cache=static)
        b, _ = model(ids, cache=growing)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for t in range(10):
            nxt = torch.tensor([[t * 7 % 97]])
            a, _ = model(nxt, cache=static)
            b, _ = model(nxt, cache=growing)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert static.length == growing.length == 15
    static.reset()
    assert static.length == 0


def test_compiled_generation_gives_the_eager_tokens():
    """The compiled step (torch.compile) produces the eager greedy tokens, slides its window
    like the eager loop, and is compiled once per model."""
    model = decoder()
    prompt = [3, 1, 4, 1, 5]
    n = 30  # past the 24-token context, so the window slides
    eager = list(generate_ids(model, prompt, n, temperature=0))
    compiled = list(generate_ids(model, prompt, n, temperature=0, compile=True))
    assert compiled == eager
    step = model._compiled_decode["step"]
    again = list(generate_ids(model, prompt[:2], 8, temperature=0, compile=True))
    assert again == list(generate_ids(model, prompt[:2], 8, temperature=0))
    assert model._compiled_decode["step"] is step


def test_cuda_decoding_replays_a_cuda_graph(monkeypatch):
    """On CUDA the step compiles with "reduce-overhead" (CUDA graphs) and the static cache's
    buffers are marked as fixed addresses; on a CPU neither. (What a GPU does with them is
    for benchmarks/gpu.sh.)"""
    from attnkit.generate import compile_mode, compiled_step, static_cache

    assert compile_mode(torch.device("cuda")) == "reduce-overhead"
    assert compile_mode(torch.device("cuda:1")) == "reduce-overhead"
    assert compile_mode(torch.device("cpu")) is None
    modes, marked = [], []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: modes.append(kw["mode"]) or fn)
    monkeypatch.setattr(torch._dynamo, "mark_static_address", marked.append)
    model = decoder()
    compiled_step(model)
    compiled_step(model)
    static_cache(model, 1)
    assert modes == [None] and marked == []  # compiled once, for the CPU
    import attnkit.generate as generate  # now as if the model were on a GPU

    monkeypatch.setattr(generate, "compile_mode", lambda device: "reduce-overhead")
    compiled_step(model)
    cache = static_cache(model, 2)  # a new batch size: a new cache, marked
    assert modes == [None, "reduce-overhead"]
    assert [id(b) for b in marked] == [id(b) for b in [*cache.k, *cache.v, cache.pos]]


def test_the_cuda_graph_settings_compile_and_decode_like_eager(monkeypatch):
    """The step compiled in "reduce-overhead" mode into a cache whose buffers are marked as
    fixed addresses (what CUDA gets) traces and decodes as eagerly; on a CPU inductor only
    skips the graph capture itself."""
    import attnkit.generate as generate

    model = decoder()
    prompt = [3, 1, 4, 1, 5]
    eager = list(generate_ids(model, prompt, 30, temperature=0))
    monkeypatch.setattr(generate, "compile_mode", lambda device: "reduce-overhead")
    assert list(generate_ids(model, prompt, 30, temperature=0, compile=True)) == eager
    assert model._compiled_decode["mode"] == "reduce-overhead"


def test_last_only_gives_the_last_row_of_the_full_logits():
    model = decoder()
    ids = torch.randint(0, 97, (2, 9))
    with torch.inference_mode():
        full, _ = model(ids)
        last, _ = model(ids, last_only=True)
    assert last.shape == (2, 1, 97)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-6)
