"""The output head's decode fast path computes the same logits as ``nn.Linear``."""

import torch
import torch.nn.functional as F

from attnkit.config import ModelConfig
from attnkit.models import Decoder
from attnkit.nn import OutputHead


def test_fast_path_matches_linear_and_follows_weight_updates():
    torch.manual_seed(0)
    head = OutputHead(16, 50, bias=False)
    x = torch.randn(1, 1, 16)
    with torch.inference_mode():
        fast = head(x)
    assert head._transposed is not None  # the transposed copy was used
    torch.testing.assert_close(fast, F.linear(x, head.weight), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        head.weight.mul_(2.0)  # an in-place update (optimizer step, load_state_dict)
    with torch.inference_mode():
        torch.testing.assert_close(head(x), F.linear(x, head.weight), rtol=1e-5, atol=1e-6)


def test_training_and_large_batches_use_the_plain_layer():
    head = OutputHead(8, 20, bias=False)
    out = head(torch.randn(2, 3, 8))  # autograd on: plain path, gradients flow
    out.sum().backward()
    assert head.weight.grad is not None and head._transposed is None
    with torch.inference_mode():
        head(torch.randn(4, 16, 8))  # 64 rows: above the fast-path limit
    assert head._transposed is None


def test_tied_decoder_keeps_its_state_dict_and_decodes_the_same():
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=40, d_model=32, n_heads=4, n_layers=1,
                                context_length=16)).eval()
    assert model.lm_head.weight is model.tok_emb.weight
    assert not any("transposed" in k for k in model.state_dict())
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        reference, _ = model(ids)
    cache = model.new_cache(1)
    with torch.inference_mode():
        model(ids[:, :2], cache=cache)
        last, _ = model(ids[:, 2:], cache=cache)
    torch.testing.assert_close(last[:, -1], reference[:, -1], rtol=1e-5, atol=1e-5)
