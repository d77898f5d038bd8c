"""StaticKVCache and the compiled decode step (attnkit.backends.compiled) give what the growing
KVCache gives; the contract's last-position logits are the full logits' last row."""

import pytest
import torch

from attnkit.backends import accelerate, compiled
from attnkit.backends.compiled import compile_mode, compiled_step, static_cache
from attnkit.config import ModelConfig
from attnkit.generate import generate_ids
from attnkit.generate.steps import last_logits
from attnkit.models import Decoder
from attnkit.nn.kv_cache import StaticKVCache


def decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, d_model=32, n_heads=4, n_layers=2, context_length=24, dropout=0.0)
    return Decoder(ModelConfig(**{**cfg, **kw})).eval()


def compiles(monkeypatch) -> list:
    """Record the mode of every ``torch.compile`` call, and compile."""
    modes = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: modes.append(kw.get("mode")) or
                        real(fn, **kw))
    return modes


@pytest.mark.parametrize("kw", [{}, {"pos": "rope", "norm": "rmsnorm", "ffn": "swiglu",
                                     "n_kv_heads": 2}, {"pos": "alibi"},
                                {"pos": "sinusoidal"}])
def test_static_cache_decodes_like_the_growing_cache(kw):
    model = decoder(**kw)
    cfg = model.cfg
    static = StaticKVCache(cfg.n_layers, 1, cfg.n_kv_heads, cfg.head_size, cfg.context_length)
    assert isinstance(model.new_cache(1, static=True), StaticKVCache)
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


@pytest.mark.parametrize("purpose", [None, "decode"])
def test_compiled_generation_gives_the_eager_tokens(purpose, monkeypatch):
    """The compiled step (torch.compile) produces the eager greedy tokens, slides its window
    like the eager loop, and is compiled once per model; an accelerated model compiles as
    well (compiled code takes the plain kernels)."""
    model = decoder()
    if purpose:
        accelerate(model, purpose=purpose)
    prompt = [3, 1, 4, 1, 5]
    n = 30  # past the 24-token context, so the window slides
    eager = list(generate_ids(model, prompt, n, temperature=0))
    modes = compiles(monkeypatch)
    compiled_tokens = list(generate_ids(model, prompt, n, temperature=0, compile=True))
    assert compiled_tokens == eager
    step = compiled_step(model)
    again = list(generate_ids(model, prompt[:2], 8, temperature=0, compile=True))
    assert again == list(generate_ids(model, prompt[:2], 8, temperature=0))
    assert compiled_step(model) is step and modes == [None]  # compiled once, for the CPU


def test_cuda_decoding_replays_a_cuda_graph(monkeypatch):
    """On CUDA the step compiles with "reduce-overhead" (CUDA graphs) and the static cache's
    buffers are marked as fixed addresses; on a CPU neither. (What a GPU does with them is
    for benchmarks/gpu.sh.)"""
    assert compile_mode(torch.device("cuda")) == "reduce-overhead"
    assert compile_mode(torch.device("cuda:1")) == "reduce-overhead"
    assert compile_mode(torch.device("cpu")) is None
    modes, marked = [], []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: modes.append(kw["mode"]) or fn)
    monkeypatch.setattr(torch._dynamo, "mark_static_address", marked.append)
    model = decoder()
    compiled_step(model)
    compiled_step(model)
    first = static_cache(model, 1)
    assert modes == [None] and marked == []  # compiled once, for the CPU
    assert static_cache(model, 1) is first  # kept per model and batch size, and emptied
    assert first.length == 0
    monkeypatch.setattr(compiled, "compile_mode", lambda device: "reduce-overhead")  # a GPU
    compiled_step(model)
    cache = static_cache(model, 2)  # a new batch size: a new cache, marked
    assert modes == [None, "reduce-overhead"]
    assert [id(b) for b in marked] == [id(b) for b in [*cache.k, *cache.v, cache.pos]]
    assert not hasattr(model, "_compiled_decode")  # nothing is stored on the model


def test_the_cuda_graph_settings_compile_and_decode_like_eager(monkeypatch):
    """The step compiled in "reduce-overhead" mode into a cache whose buffers are marked as
    fixed addresses (what CUDA gets) traces and decodes as eagerly; on a CPU inductor only
    skips the graph capture itself."""
    model = decoder()
    prompt = [3, 1, 4, 1, 5]
    eager = list(generate_ids(model, prompt, 30, temperature=0))
    monkeypatch.setattr(compiled, "compile_mode", lambda device: "reduce-overhead")
    modes = compiles(monkeypatch)
    assert list(generate_ids(model, prompt, 30, temperature=0, compile=True)) == eager
    assert modes == ["reduce-overhead"]


@pytest.mark.parametrize("purpose", [None, "decode"])
def test_the_last_position_alone_gives_the_last_row_of_the_full_logits(purpose):
    """What ``last_only=True`` was: the output layer on the last hidden state only."""
    model = decoder(d_model=384, n_heads=4, vocab_size=400)  # large enough to be packed
    if purpose:
        accelerate(model, purpose=purpose)
    ids = torch.randint(0, 97, (2, 9))
    with torch.inference_mode():
        full, _ = model(ids)
        last = model.lm_head(model.hidden(ids)[:, -1])
        assert last.shape == (2, 400)
        torch.testing.assert_close(last, full[:, -1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(last_logits(model, ids, None), full[:, -1], rtol=1e-5,
                                   atol=1e-6)
        assert torch.equal(model.lm_head.greedy(model.hidden(ids)[:, -1]), full[:, -1].argmax(-1))
