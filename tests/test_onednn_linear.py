"""attnkit.nn.Linear trains through oneDNN on a CPU in fp32: the same outputs and gradients as
nn.Linear, and the plain path wherever oneDNN does not apply."""

import pytest
import torch

from attnkit.nn import Linear
from attnkit.nn import linear as linear_module

pytestmark = pytest.mark.skipif(not linear_module.PACKING, reason="no oneDNN in this torch")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 300, 96, 200), (2, 4, 1024, 1100)])
def test_training_products_match_nn_linear(bias, shape, monkeypatch):
    """900 rows x 19200 weights, above TRAIN_MACS; 8 rows x 1.1M weights, above COPY_NUMEL too
    (the weight gradient's operands are copied before the product)."""
    calls = []
    real = linear_module.onednn_linear
    monkeypatch.setattr(linear_module, "onednn_linear", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    B, T, n_in, n_out = shape
    fast = Linear(n_in, n_out, bias=bias)
    plain = torch.nn.Linear(n_in, n_out, bias=bias)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(B, T, n_in, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(B, T, n_out)
    fast(x).backward(g)
    plain(x2).backward(g)
    assert len(calls) == 3  # forward, input gradient, weight gradient
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    if bias:
        torch.testing.assert_close(fast.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)


def test_small_products_autocast_and_inference_take_other_paths(monkeypatch):
    calls = []
    monkeypatch.setattr(linear_module, "_OneDNNLinear",
                        type("Spy", (), {"apply": staticmethod(lambda *a: calls.append(1))}))
    layer = Linear(96, 200)
    layer(torch.randn(4, 96))  # 4 rows: below TRAIN_MACS
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(900, 96))  # bf16 autocast: PyTorch's own (oneDNN bf16) path
    with torch.inference_mode():
        layer(torch.randn(900, 96))  # inference: the packed path or the plain one
    assert calls == []
