"""The packed decode path of ``attnkit.nn.Linear`` (and the output head) computes what
``nn.Linear`` computes, follows weight updates, and stays out of training."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkit.config import ModelConfig
from attnkit.models import Decoder
from attnkit.nn import Linear, OutputHead
from attnkit.nn import linear as linear_module

needs_packing = pytest.mark.skipif(not linear_module.PACKING, reason="no oneDNN in this torch")


@needs_packing
@pytest.mark.parametrize("cls,bias", [(OutputHead, False), (Linear, True)])
def test_packed_path_matches_linear_and_follows_weight_updates(cls, bias):
    torch.manual_seed(0)
    layer = cls(512, 300, bias=bias)  # 153600 weights: above FAST_NUMEL
    for x in (torch.randn(1, 1, 512), torch.randn(8, 512)):
        with torch.inference_mode():
            fast = layer(x)
        assert layer._packed is not None  # the packed copy was used
        torch.testing.assert_close(fast, F.linear(x, layer.weight, layer.bias), rtol=1e-5,
                                   atol=1e-5)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # an in-place update (optimizer step, load_state_dict)
    with torch.inference_mode():
        x = torch.randn(1, 512)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5,
                                   atol=1e-5)


def test_training_small_weights_and_large_batches_use_the_plain_layer():
    layer = OutputHead(512, 300, bias=False)  # large enough to be packed
    out = layer(torch.randn(2, 3, 512))  # autograd on: plain path, gradients flow
    out.sum().backward()
    assert layer.weight.grad is not None and layer._packed is None
    with torch.inference_mode():
        layer(torch.randn(4, 16, 512))  # 64 rows: above FAST_ROWS
        layer.to(torch.float16)(torch.randn(1, 512, dtype=torch.float16))  # not fp32 or bf16
    assert layer._packed is None
    small = Linear(16, 20)  # 320 weights: the oneDNN call would cost more than it saves
    with torch.inference_mode():
        small(torch.randn(1, 16))
    assert small._packed is None


def test_tied_decoder_keeps_its_state_dict_and_decodes_the_same():
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=400, d_model=384, n_heads=4, n_layers=1,
                                context_length=16)).eval()  # 384 x 384 weights: packed
    assert model.lm_head.weight is model.tok_emb.weight
    assert not any("packed" in k for k in model.state_dict())
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        reference, _ = model(ids)
    cache = model.new_cache(1)
    with torch.inference_mode():
        model(ids[:, :2], cache=cache)
        last, _ = model(ids[:, 2:], cache=cache)
    torch.testing.assert_close(last[:, -1], reference[:, -1], rtol=1e-5, atol=1e-5)
    if linear_module.PACKING:
        attn = model.blocks[0].attn
        assert model.lm_head._packed is not None and attn._qkv is not None  # q, k, v stacked
        assert attn.q_proj._packed is None and model.blocks[0].ffn.up_proj._packed is not None


# ------------------------------------------------------------------ greedy through the bf16 screen

needs_bf16 = pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="oneDNN cannot multiply bf16 on this CPU")


@pytest.fixture
def screened(monkeypatch):
    """The screen on, whether or not this CPU multiplies bf16 natively (oneDNN emulates it
    where not: slower, the same results)."""
    from attnkit.nn import head

    monkeypatch.setattr(head, "PACKED_DTYPES", (torch.float32, torch.bfloat16))
    return head


def vocab_head(bias: bool, V: int = 16384, C: int = 256, seed: int = 0) -> OutputHead:
    torch.manual_seed(seed)
    layer = OutputHead(C, V, bias=bias)  # 2^22 weights: the screen's smallest head
    nn.init.normal_(layer.weight, std=0.02)
    if bias:
        nn.init.normal_(layer.bias, std=0.1)
    return layer


@needs_bf16
@pytest.mark.parametrize("bias", [False, True])
def test_greedy_is_the_argmax_of_the_fp32_logits(screened, bias):
    layer = vocab_head(bias)
    with torch.inference_mode():
        for seed in range(40):
            torch.manual_seed(seed)
            x = F.layer_norm(torch.randn(1 + seed % 3, 256) * 3, (256,))
            assert torch.equal(layer.greedy(x), layer(x).argmax(-1))
    assert layer._screen is not None  # the screen ran (then the full product, to compare)


@needs_bf16
@pytest.mark.parametrize("gap", [1e-3, -1e-3, 1e-5, -1e-5])
def test_greedy_separates_near_ties_the_bf16_screen_cannot(screened, gap):
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
def test_greedy_falls_back_to_the_full_product(screened, monkeypatch):
    layer = vocab_head(False)
    calls = []
    real = OutputHead.forward
    monkeypatch.setattr(OutputHead, "forward", lambda self, x: calls.append(1) or real(self, x))
    x = F.layer_norm(torch.randn(1, 256), (256,))
    with torch.inference_mode():
        monkeypatch.setattr(screened, "SCREEN_MAX_CANDIDATES", 0)  # too many candidates
        assert torch.equal(layer.greedy(x), real(layer, x).argmax(-1)) and calls == [1]
        monkeypatch.setattr(screened, "SCREEN_MAX_CANDIDATES", 4096)
        nan = torch.full((1, 256), float("nan"))  # no candidate at all: the product decides
        assert torch.equal(layer.greedy(nan), real(layer, nan).argmax(-1)) and calls == [1, 1]
        layer.greedy(x)
        assert calls == [1, 1]  # the screen alone


def test_greedy_without_the_screen_is_the_plain_argmax(monkeypatch):
    from attnkit.nn import head

    monkeypatch.setattr(head, "PACKED_DTYPES", (torch.float32,))  # a CPU without native bf16
    layer = vocab_head(True)
    x = torch.randn(2, 256)
    with torch.inference_mode():
        assert torch.equal(layer.greedy(x), layer(x).argmax(-1))
    assert layer._screen is None
    assert torch.equal(layer.greedy(x), layer(x).argmax(-1))  # autograd on: plain path too
