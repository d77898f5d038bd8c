"""One Transformer layer: attention then feed-forward, each in a residual branch; an
encoder-decoder's decoder layer has a cross-attention branch between the two.

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
    """Self-attention, then (when ``cross_attn`` is given) cross-attention over an encoder's
    output, then the feed-forward network. Each sub-layer has its own norm."""

    def __init__(self, attn: Attention, ffn: nn.Module, attn_norm: nn.Module,
                 ffn_norm: nn.Module, norm_position: str, dropout: float = 0.0, *,
                 cross_attn: nn.Module | None = None, cross_norm: nn.Module | None = None
                 ) -> None:
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {norm_position!r}")
        if (cross_attn is None) != (cross_norm is None):
            raise ValueError("cross_attn and cross_norm come together")
        self.attn, self.cross_attn, self.cross_norm = attn, cross_attn, cross_norm  # None: no keys
        self.ffn = ffn
        self.attn_norm, self.ffn_norm = attn_norm, ffn_norm
        self.pre = norm_position == "pre"
        self.drop = nn.Dropout(dropout)

    def residual(self, x: torch.Tensor, sublayer, norm: nn.Module) -> tuple[torch.Tensor, object]:
        """One branch: pre-LN ``x + f(norm(x))`` or post-LN ``norm(x + f(x))`` (the paper's
        ``LayerNorm(x + Sublayer(x))``); ``sublayer`` returns (output, weights or None)."""
        if self.pre:
            out, weights = sublayer(norm(x))
            return x + self.drop(out), weights
        out, weights = sublayer(x)
        return norm(x + self.drop(out)), weights

    def forward(self, x: torch.Tensor, *, cache: KVCache | None = None, layer: int = 0,
                need_weights: bool = False, key_padding_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, T, C) -> ((B, T, C), attention weights): ``[self (B, nh, T, S)]``, plus
        ``cross (B, nh, T, S_src)`` in a cross-attention block, with ``need_weights``; else [].

        ``key_padding_mask`` (B, S) is True for real keys and False for padding;
        ``positions`` (B, T) are per-row RoPE positions (see :class:`Attention`);
        ``memory`` (B, S_src, C) and ``memory_mask`` (B, S_src) are the encoder's output and
        its real tokens, for the cross-attention (a cache may hold them instead).
        """
        x, w_self = self.residual(
            x, lambda h: self.attn(h, cache=cache, layer=layer, need_weights=need_weights,
                                   key_padding_mask=key_padding_mask, positions=positions),
            self.attn_norm)
        weights = [w_self] if w_self is not None else []
        if self.cross_attn is not None:
            x, w_cross = self.residual(
                x, lambda h: self.cross_attn(h, memory, key_padding_mask=memory_mask, cache=cache,
                                             layer=layer, need_weights=need_weights),
                self.cross_norm)
            if w_cross is not None:
                weights.append(w_cross)
        x, _ = self.residual(x, lambda h: (self.ffn(h), None), self.ffn_norm)
        return x, weights
