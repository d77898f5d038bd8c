"""The packed decode path of ``attnkit.nn.Linear`` (and the output head) computes what
``nn.Linear`` computes, follows weight updates, and stays out of training."""

import pytest
import torch
import torch.nn.functional as F

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
