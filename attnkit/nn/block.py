"""One Transformer layer: attention then feed-forward, each in a residual branch.

``norm_position`` picks where the normalisation sits:

- ``post`` (the 2017 paper): ``x = norm(x + sublayer(x))``. Gradients to early
  layers pass through every norm, which is why post-LN needs learning-rate
  warmup to train deep stacks (Xiong et al., 2020).
- ``pre`` (GPT-2 onward): ``x = x + sublayer(norm(x))``. The residual stream is
  an identity path, so deep stacks train stably; the stack then needs one
  final norm before the output layer.
"""

import torch
from torch import nn

from attnkit.nn.attention import Attention
from attnkit.nn.kv_cache import KVCache


class Block(nn.Module):
    def __init__(self, attn: Attention, ffn: nn.Module, attn_norm: nn.Module,
                 ffn_norm: nn.Module, norm_position: str, dropout: float = 0.0) -> None:
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {norm_position!r}")
        self.attn, self.ffn = attn, ffn
        self.attn_norm, self.ffn_norm = attn_norm, ffn_norm
        self.pre = norm_position == "pre"
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, cache: KVCache | None = None, layer: int = 0,
                need_weights: bool = False, key_padding_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, C) -> ((B, T, C), attention weights or None); ``key_padding_mask`` (B, S)
        is True for real keys and False for padding; ``positions`` (B, T) are per-row RoPE
        positions (see :class:`Attention`)."""
        if self.pre:
            a, weights = self.attn(self.attn_norm(x), cache=cache, layer=layer,
                                   need_weights=need_weights, key_padding_mask=key_padding_mask,
                                   positions=positions)
            x = x + self.drop(a)
            x = x + self.drop(self.ffn(self.ffn_norm(x)))
        else:
            a, weights = self.attn(x, cache=cache, layer=layer, need_weights=need_weights,
                                   key_padding_mask=key_padding_mask, positions=positions)
            x = self.attn_norm(x + self.drop(a))
            x = self.ffn_norm(x + self.drop(self.ffn(x)))
        return x, weights
