"""attnkit.backends.causal: block-causal attention with oneDNN products computes what SDPA's
causal attention computes (outputs and all three gradients), and an accelerated Attention uses
it exactly where it applies."""

import pytest
import torch
import torch.nn.functional as F

from attnkit.backends import accelerate, backend_of
from attnkit.backends import causal as causal_module
from attnkit.backends.causal import causal_attention, usable
from attnkit.nn import Attention
from attnkit.nn.kv_cache import KVCache

pytestmark = pytest.mark.skipif(not usable(torch.zeros(1, 1, causal_module.MIN_LENGTH, 1)),
                                reason="no oneDNN in this torch")


def qkv(B: int, nh: int, nkv: int, T: int, hs: int, seed: int = 0):
    """q, k, v laid out as Attention makes them: (B, T, n, hs) projections viewed (B, n, T, hs)."""
    g = torch.Generator().manual_seed(seed)
    made = [torch.randn(B, T, n, hs, generator=g).transpose(1, 2).requires_grad_()
            for n in (nh, nkv, nkv)]
    return made, torch.randn(B, nh, T, hs, generator=g)


@pytest.mark.parametrize("nkv,T,block", [(4, 512, 128), (2, 600, 256), (1, 300, 128)])
def test_outputs_and_gradients_match_sdpa(nkv, T, block):
    """MHA, GQA and MQA; a length that is not a multiple of the block."""
    (q, k, v), grad = qkv(2, 4, nkv, T, 16)
    twins = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = causal_attention(q, k, v, block)
    ref = F.scaled_dot_product_attention(*twins, is_causal=True, enable_gqa=nkv != 4)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.backward(grad)
    ref.backward(grad)
    for ours, theirs in zip((q, k, v), twins):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)


def test_usable_only_for_long_fp32_cpu_inputs():
    assert usable(torch.zeros(1, 2, 512, 8))
    assert not usable(torch.zeros(1, 2, 511, 8))  # short: SDPA's kernel
    assert not usable(torch.zeros(1, 2, 512, 8, dtype=torch.bfloat16))


def test_inference_mode_forward_works():
    (q, k, v), _ = qkv(1, 2, 2, 512, 8)
    with torch.inference_mode():
        out = causal_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def spy(monkeypatch) -> list:
    calls = []
    real = causal_module.causal_attention
    monkeypatch.setattr(causal_module, "causal_attention",
                        lambda *a: calls.append(a[0].shape) or real(*a))
    return calls


def fast_attention(*args, **kwargs) -> Attention:
    layer = accelerate(Attention(*args, **kwargs), purpose="train")
    assert backend_of(layer) == "onednn"
    return layer


def test_attention_takes_it_where_it_applies(monkeypatch):
    calls = spy(monkeypatch)
    torch.manual_seed(0)
    eager = Attention(32, 4, 2, causal=True, backend="eager")  # softmax(QK^T)V spelled out
    fast = fast_attention(32, 4, 2, causal=True)
    fast.load_state_dict(eager.state_dict())
    x = torch.randn(2, 520, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    out, _ = fast(x)
    ref, _ = eager(x2)
    assert calls == [(2, 4, 520, 8)]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, dict(eager.named_parameters())[name].grad,
                                   rtol=1e-4, atol=1e-4)

    # a prefill into an empty cache starts at 0 as well; its keys come from the cache
    with torch.inference_mode():
        cached, _ = fast(x.detach(), cache=KVCache(1, 2, 2, 8, 600))
    torch.testing.assert_close(cached, ref.detach(), rtol=1e-5, atol=1e-5)
    assert len(calls) == 2


def test_attention_keeps_sdpa_elsewhere(monkeypatch):
    calls = spy(monkeypatch)
    layer = fast_attention(32, 4, 4, causal=True, dropout=0.1)
    layer(torch.randn(1, 600, 32))  # dropout while training
    layer.eval()
    layer(torch.randn(1, 100, 32))  # short
    fast_attention(32, 4, 4, causal=False)(torch.randn(1, 600, 32))  # not causal
    layer(torch.randn(1, 600, 32), key_padding_mask=torch.ones(1, 600))  # a mask
    with torch.inference_mode():  # a chunk after cached tokens: queries start later than keys
        cache = KVCache(1, 1, 4, 8, 1200)
        layer(torch.randn(1, 10, 32), cache=cache)
        cache.advance(10)  # as the model does after each layer has stored its keys
        layer(torch.randn(1, 600, 32), cache=cache)
    assert calls == []
