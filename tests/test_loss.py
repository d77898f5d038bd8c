"""The fused output layer + cross-entropy (attnkit.backends.loss) equals the plain one, loss
and gradients, alone and as a train-accelerated model's loss."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.backends import accelerate
from attnkit.backends import loss as fused
from attnkit.config import ModelConfig
from attnkit.models import Decoder


@pytest.mark.parametrize("onednn", [True, False])  # oneDNN's products or PyTorch's
@pytest.mark.parametrize("rows", [7, fused.CHUNK, fused.CHUNK * 2 + 3])  # one, exact, ragged chunks
def test_loss_and_gradients_match_the_plain_path(rows, onednn, monkeypatch):
    if onednn and not fused.PACKING:
        pytest.skip("no oneDNN in this torch")
    monkeypatch.setattr(fused, "PACKING", onednn)
    torch.manual_seed(0)
    h = torch.randn(rows, 16, requires_grad=True)
    w = (torch.randn(50, 16) * 0.3).requires_grad_()
    t = torch.randint(0, 50, (rows,))
    t[::3] = -100
    ref = F.cross_entropy(F.linear(h, w), t)
    gh, gw = torch.autograd.grad(ref, (h, w))
    got = fused.linear_cross_entropy(h, w, t)
    fh, fw = torch.autograd.grad(got * 2.0, (h, w))  # an upstream gradient other than 1
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fh, 2 * gh, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fw, 2 * gw, rtol=1e-4, atol=1e-7)


def test_without_gradients_and_with_every_target_ignored():
    h, w = torch.randn(5, 8), torch.randn(11, 8)
    t = torch.tensor([1, 2, -100, 4, 10])
    with torch.no_grad():
        torch.testing.assert_close(fused.linear_cross_entropy(h, w, t),
                                   F.cross_entropy(h @ w.t(), t), rtol=1e-5, atol=1e-6)
    assert math.isnan(fused.linear_cross_entropy(h, w, torch.full((5,), -100)).item())


def tiny_pair() -> tuple[Decoder, Decoder]:
    """A tied decoder in training mode and its train-accelerated copy."""
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=300, d_model=32, n_heads=2, n_layers=2,
                                context_length=64)).train()
    assert model.lm_head.weight is model.tok_emb.weight
    return model, accelerate(copy.deepcopy(model), purpose="train", backend="onednn")


def grads(model: Decoder) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters()}


def test_a_tied_decoder_trains_identically_without_logits():
    plain, fast = tiny_pair()
    x, y = torch.randint(0, 300, (6, 64)), torch.randint(0, 300, (6, 64))
    logits, want = plain(x, y)
    want.backward()
    none, loss = fast(x, y)
    loss.backward()
    assert none is None and logits is not None  # the fused loss builds no logits
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    expected = grads(plain)
    for name, grad in grads(fast).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-7)
    # evaluation reads the logits: out of training mode the accelerated model returns them
    plain.eval(), fast.eval()
    with torch.no_grad():
        (logits, want), (same, loss) = plain(x, y), fast(x, y)
    torch.testing.assert_close(same, logits)
    torch.testing.assert_close(loss, want)


def test_bf16_autocast_matches_the_plain_autocast_path():
    """Under CPU bf16 autocast the fused path multiplies in bf16 (as autocast's F.linear does)
    and keeps the softmax, the loss and the gradients in fp32 (as autocast's cross_entropy)."""
    plain, fast = tiny_pair()
    x, y = torch.randint(0, 300, (6, 64)), torch.randint(0, 300, (6, 64))
    y[:, :5] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, want = plain(x, y)
    want.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        none, loss = fast(x, y)
    loss.backward()
    assert none is None and loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=1e-3, atol=1e-3)
    expected = grads(plain)
    for name, grad in grads(fast).items():
        assert grad.dtype == torch.float32
        scale = expected[name].abs().max()
        assert (grad - expected[name]).abs().max() <= 0.02 * scale, name
