"""An accelerated ``nn.Linear`` (attnkit.backends.onednn.OneDNNLinear) trains through oneDNN
on a CPU in fp32: the same outputs and gradients as nn.Linear, and the plain path wherever
oneDNN does not apply."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkit.backends import accelerate, backend_of, make_plain, onednn
from attnkit.backends.onednn import OneDNNLinear

pytestmark = pytest.mark.skipif(not onednn.PACKING, reason="no oneDNN in this torch")


def products(monkeypatch) -> list:
    """Record every product the back-end hands to oneDNN."""
    calls = []
    real = onednn.onednn_linear
    monkeypatch.setattr(onednn, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    return calls


def training(layer: nn.Linear) -> nn.Linear:
    accelerate(layer, purpose="train")
    assert type(layer) is OneDNNLinear and backend_of(layer) == "onednn"
    return layer


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 300, 96, 200), (2, 4, 1024, 1100)])
def test_training_products_match_nn_linear(bias, shape, monkeypatch):
    """900 rows x 19200 weights, above TRAIN_MACS; 8 rows x 1.1M weights, above COPY_NUMEL too
    (the weight gradient's operands are copied before the product)."""
    calls = products(monkeypatch)
    torch.manual_seed(0)
    B, T, n_in, n_out = shape
    plain = nn.Linear(n_in, n_out, bias=bias)
    fast = training(nn.Linear(n_in, n_out, bias=bias))
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(B, T, n_in, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(B, T, n_out)
    out = fast(x)
    torch.testing.assert_close(out, plain(x2), rtol=1e-5, atol=1e-5)
    out.backward(g)
    plain(x2).backward(g)
    assert len(calls) == 3  # forward, input gradient, weight gradient
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)


def test_small_products_autocast_and_inference_take_other_paths(monkeypatch):
    calls = products(monkeypatch)
    layer = training(nn.Linear(96, 200))
    layer(torch.randn(4, 96))  # 4 rows: below TRAIN_MACS
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(900, 96))  # bf16 autocast: PyTorch's own (oneDNN bf16) path
    with torch.inference_mode():
        layer(torch.randn(900, 96))  # inference: the packed path (too small here) or the plain one
    assert calls == []
    layer.weight.requires_grad_(False)  # a frozen weight: still oneDNN, still nn.Linear's function
    x = torch.randn(900, 96)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5,
                               atol=1e-5)
    assert calls == [1]
    assert type(make_plain(layer)) is nn.Linear
