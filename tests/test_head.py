"""The oneDNN back-end's decode path: an accelerated ``nn.Linear`` (and output head) computes
what ``nn.Linear`` computes through a packed copy of its weight, makes the copy again after a
weight update, stays out of training; DecodeHead's greedy answer is the fp32 argmax."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkit import devices
from attnkit.backends import accelerate, attention, backend_of, head, make_plain, onednn
from attnkit.backends.head import DecodeHead
from attnkit.config import ModelConfig
from attnkit.models import Decoder
from attnkit.nn import OutputHead

needs_packing = pytest.mark.skipif(not onednn.PACKING, reason="no oneDNN in this torch")


def packs(monkeypatch, module=onednn) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Record (shape, dtype) of every weight ``module`` packs for oneDNN."""
    calls = []
    real = module.pack
    monkeypatch.setattr(module, "pack",
                        lambda w: calls.append((tuple(w.shape), w.dtype)) or real(w))
    return calls


def decoding(layer: nn.Module) -> nn.Module:
    return accelerate(layer, purpose="decode", backend="onednn")


@needs_packing
@pytest.mark.parametrize("cls,bias", [(OutputHead, False), (nn.Linear, True)])
def test_packed_path_matches_linear_and_follows_weight_updates(cls, bias, monkeypatch):
    torch.manual_seed(0)
    layer = decoding(cls(512, 300, bias=bias))  # 153600 weights: above FAST_NUMEL
    packed = packs(monkeypatch)
    for x in (torch.randn(1, 1, 512), torch.randn(8, 512)):
        with torch.inference_mode():
            fast = layer(x)
        torch.testing.assert_close(fast, F.linear(x, layer.weight, layer.bias), rtol=1e-5,
                                   atol=1e-5)
    assert packed == [((300, 512), torch.float32)]  # packed once, used for both
    with torch.no_grad():
        layer.weight.mul_(2.0)  # an in-place update (optimizer step, load_state_dict)
    with torch.inference_mode():
        x = torch.randn(1, 512)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5,
                                   atol=1e-5)
    assert len(packed) == 2  # the copy was made again
    layer.weight = nn.Parameter(torch.randn(300, 512) / 512**0.5)  # another tensor
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5,
                                   atol=1e-5)
    assert len(packed) == 3


@needs_packing
def test_training_small_weights_and_large_batches_use_the_plain_layer(monkeypatch):
    packed = packs(monkeypatch)
    layer = decoding(OutputHead(512, 300, bias=False))  # large enough to be packed
    out = layer(torch.randn(2, 3, 512))  # autograd on: plain path, gradients flow
    out.sum().backward()
    assert layer.weight.grad is not None
    with torch.inference_mode():
        layer(torch.randn(4, 16, 512))  # 64 rows: above FAST_ROWS
        layer.to(torch.float16)(torch.randn(1, 512, dtype=torch.float16))  # not fp32 or bf16
    small = decoding(nn.Linear(16, 20))  # 320 weights: the oneDNN call would cost more than it saves
    with torch.inference_mode():
        small(torch.randn(1, 16))
    assert packed == []


def test_tied_decoder_keeps_its_state_dict_and_decodes_the_same(monkeypatch):
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=400, d_model=384, n_heads=4, n_layers=1,
                                context_length=16)).eval()  # 384 x 384 weights: packed
    keys = model.state_dict().keys()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        reference, _ = model(ids)
    packed, stacked = packs(monkeypatch), packs(monkeypatch, attention)
    accelerate(model, purpose="decode")
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.state_dict().keys() == keys  # no packed copy among them
    cache = model.new_cache(1)
    with torch.inference_mode():
        model(ids[:, :2], cache=cache)
        last, _ = model(ids[:, 2:], cache=cache)
    torch.testing.assert_close(last[:, -1], reference[:, -1], rtol=1e-5, atol=1e-5)
    assert model.state_dict().keys() == keys
    if backend_of(model) == "onednn":
        f32 = torch.float32
        assert stacked == [((3 * 384, 384), f32)]  # q, k, v stacked into one packed matrix
        # and not packed alone: o_proj is the one 384 x 384 weight packed by itself
        assert sorted(packed) == sorted([((384, 384), f32), ((1536, 384), f32),
                                         ((384, 1536), f32), ((400, 384), f32)])


# ------------------------------------------------------------------ greedy through the bf16 screen

needs_bf16 = pytest.mark.skipif(
    not (onednn.PACKING and devices.cpu_has_native_bf16()),
    reason="oneDNN packs bf16 weights only on a CPU with native bf16 (AVX512-BF16 or AMX)")


def vocab_head(bias: bool, V: int = 16384, C: int = 256, seed: int = 0) -> DecodeHead:
    torch.manual_seed(seed)
    layer = OutputHead(C, V, bias=bias)  # 2^22 weights: the screen's smallest head
    nn.init.normal_(layer.weight, std=0.02)
    if bias:
        nn.init.normal_(layer.bias, std=0.1)
    return decoding(layer)


def bf16_packs(calls: list) -> list:
    return [c for c in calls if c[1] == torch.bfloat16]


@needs_bf16
@pytest.mark.parametrize("bias", [False, True])
def test_greedy_is_the_argmax_of_the_fp32_logits(bias, monkeypatch):
    packed = packs(monkeypatch, head)
    layer = vocab_head(bias)
    with torch.inference_mode():
        for seed in range(40):
            torch.manual_seed(seed)
            x = F.layer_norm(torch.randn(1 + seed % 3, 256) * 3, (256,))
            assert torch.equal(layer.greedy(x), layer(x).argmax(-1))
    assert bf16_packs(packed) == [((16384, 256), torch.bfloat16)]  # the screen ran, one copy


@needs_bf16
@pytest.mark.parametrize("gap", [1e-3, -1e-3, 1e-5, -1e-5])
def test_greedy_separates_near_ties_the_bf16_screen_cannot(gap):
    """Rows whose logits differ far below bf16's resolution, each rounded differently (a
    rival is the top row plus ``gap`` along x plus a large part orthogonal to x): the screen
    may rank them either way, so it must keep all of them and let the fp32 products decide."""
    layer = vocab_head(False)
    torch.manual_seed(1)
    x = F.layer_norm(torch.randn(1, 256), (256,))
    along = x[0] / x[0].norm() ** 2  # adds exactly 1 to the logit
    with torch.no_grad():
        top = int(layer(x).argmax())
        for i in range(1, 33):
            noise = torch.randn(256) * 0.5
            noise -= (noise @ x[0]) * along  # orthogonal to x: the logit does not move
            layer.weight[(top + 97 * i) % 16384] = layer.weight[top] + noise + gap * i * along
    with torch.inference_mode():
        want = layer(x).argmax(-1)
        assert int(want) == (((top + 97 * 32) % 16384) if gap > 0 else top)
        assert torch.equal(layer.greedy(x), want)


@needs_bf16
def test_greedy_falls_back_to_the_full_product(monkeypatch):
    layer = vocab_head(False)
    calls = []
    real = DecodeHead.forward
    monkeypatch.setattr(DecodeHead, "forward", lambda self, x: calls.append(1) or real(self, x))
    x = F.layer_norm(torch.randn(1, 256), (256,))
    with torch.inference_mode():
        monkeypatch.setattr(head, "SCREEN_MAX_CANDIDATES", 0)  # too many candidates
        assert torch.equal(layer.greedy(x), real(layer, x).argmax(-1)) and calls == [1]
        monkeypatch.setattr(head, "SCREEN_MAX_CANDIDATES", 4096)
        nan = torch.full((1, 256), float("nan"))  # no candidate at all: the product decides
        assert torch.equal(layer.greedy(nan), real(layer, nan).argmax(-1)) and calls == [1, 1]
        layer.greedy(x)
        assert calls == [1, 1]  # the screen alone


def test_greedy_without_the_screen_is_the_plain_argmax(monkeypatch):
    monkeypatch.setattr(head, "PACKED_DTYPES", (torch.float32,))  # a CPU without native bf16
    packed = packs(monkeypatch, head)
    layer = vocab_head(True)
    x = torch.randn(2, 256)
    with torch.inference_mode():
        assert torch.equal(layer.greedy(x), layer(x).argmax(-1))
    assert bf16_packs(packed) == []
    assert torch.equal(layer.greedy(x), layer(x).argmax(-1))  # autograd on: plain path too
    assert torch.equal(make_plain(layer).greedy(x), layer(x).argmax(-1))  # and plain
