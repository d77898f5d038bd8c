"""Multi-head attention with grouped key/value heads (MHA, GQA, MQA).

``n_kv_heads == n_heads`` is the multi-head attention of the 2017 paper;
fewer key/value heads, each shared by ``n_heads // n_kv_heads`` query heads, is
grouped-query attention (Ainslie et al., 2023); one is multi-query attention
(Shazeer, 2019).

Two ways compute the same function: ``sdpa`` calls PyTorch's fused
``scaled_dot_product_attention``; ``eager`` spells out softmax(QK^T/sqrt(d))V
and can return the attention weights for inspection.

Two small methods are the places a back-end (:mod:`attnkit.backends`) may compute faster:
:meth:`Attention.project` (x -> q, k, v) and :meth:`Attention.attend` (the fused product).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.nn.kv_cache import KVCache
from attnkit.nn.positional import RotaryEmbedding, alibi_bias, alibi_slopes


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, bias: bool = True,
                 dropout: float = 0.0, causal: bool = True, rope: RotaryEmbedding | None = None,
                 alibi: bool = False, backend: str = "sdpa") -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_size = d_model // n_heads
        self.causal, self.dropout, self.backend = causal, dropout, backend
        self.rope = rope
        self.q_proj = nn.Linear(d_model, n_heads * self.head_size, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_size, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_size, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_size, d_model, bias=bias)
        if alibi:
            self.register_buffer("alibi_slopes", alibi_slopes(n_heads), persistent=False)
        else:
            self.alibi_slopes = None

    def forward(self, x: torch.Tensor, *, cache: KVCache | None = None, layer: int = 0,
                need_weights: bool = False, key_padding_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention over ``x`` (B, T, C) -> ((B, T, C), weights (B, nh, T, S) or None).

        With a ``cache``, the T new tokens sit at positions cache.length ..
        cache.length + T - 1 and attend to every cached token as well.
        ``key_padding_mask`` (B, S) is True (or 1) for real keys and False for
        padding, which no query attends to; a query left with no key at all (a left-padded
        position) attends to itself alone, so its output stays finite.

        ``positions`` (B, T), optional, are the RoPE positions of the new tokens per row
        (batched generation of left-padded prompts starts each row at 0); by default they
        are cache.length .. cache.length + T - 1. Causal masking and ALiBi depend only on
        the distance between tokens, so they use the cache index either way.
        """
        B, T, _ = x.shape
        static = cache is not None and cache.static
        q, k, v = self.project(x)  # (B, T, nh * hs), (B, T, nkv * hs) twice
        q = q.view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_heads, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_heads, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        q_pos = cache.positions(T, x.device) if cache is not None else \
            torch.arange(T, device=x.device)
        if self.rope is not None:
            rope_pos = q_pos if positions is None else positions
            q, k = self.rope(q, rope_pos), self.rope(k, rope_pos)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, hs) with S = start + T
        S = k.shape[2]

        mask = self._mask(q_pos, S, x.device, static)  # None, or additive (nh|1, T, S)
        if key_padding_mask is not None:
            mask = self._with_padding(mask, key_padding_mask, T, S)  # (B, nh|1, T, S)
        dropout = self.dropout if self.training else 0.0
        if need_weights or self.backend == "eager":
            out, weights = self._eager(q, k, v, mask, dropout)
        else:
            out, weights = self.attend(q, k, v, mask, dropout), None
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_size)  # (B, T, C)
        return self.o_proj(out), weights

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query, key and value projections of ``x`` (B, T, C)."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               dropout: float) -> torch.Tensor:
        """softmax(Q K^T / sqrt(hs) + mask) V by SDPA: q (B, nh, T, hs), k and v (B, nkv, S, hs),
        ``mask`` None (causal or not, by ``self.causal``) or additive (B|1, nh|1, T, S)."""
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if mask is None else mask.to(q.dtype), dropout_p=dropout,
            is_causal=self.causal and mask is None and q.shape[2] > 1,
            enable_gqa=self.n_kv_heads != self.n_heads)

    def _mask(self, q_pos: torch.Tensor, S: int, device: torch.device, static: bool = False
              ) -> torch.Tensor | None:
        """The additive mask, or None when SDPA's built-in ``is_causal`` suffices.

        ``is_causal`` aligns the mask to the top-left corner, which is only right
        when queries and keys start together (no cache) - so a cached prefill
        of several tokens, and ALiBi, need an explicit mask. So does a static cache,
        whose S slots include the empty ones after ``q_pos``.
        """
        T = q_pos.shape[0]
        start = S - T
        if not static and self.alibi_slopes is None and (start == 0 or T == 1 or not self.causal):
            return None
        k_pos = torch.arange(S, device=device)
        mask = torch.zeros(1, T, S, device=device)
        if self.causal:
            mask = mask.masked_fill(k_pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        if self.alibi_slopes is not None:
            mask = mask + alibi_bias(self.alibi_slopes, q_pos, k_pos)  # (nh, T, S)
        return mask

    def _with_padding(self, mask: torch.Tensor | None, keep: torch.Tensor, T: int, S: int
                      ) -> torch.Tensor:
        """Fold a key padding mask (B, S) into the additive mask -> (B, nh|1, T, S).

        SDPA cannot combine ``is_causal`` with an explicit mask, so the causal part
        (aligned bottom-right, as with a cache) is written out here when needed.
        """
        if mask is None and self.causal and T > 1:
            causal = torch.ones(T, S, dtype=torch.bool, device=keep.device).tril(diagonal=S - T)
            mask = torch.zeros(1, T, S, device=keep.device).masked_fill(~causal, float("-inf"))
        pad = torch.zeros(keep.shape, device=keep.device).masked_fill(~keep.bool(), float("-inf"))
        pad = pad[:, None, None, :]  # (B, 1, 1, S)
        full = pad if mask is None else mask + pad
        dead = torch.isinf(full).all(dim=-1, keepdim=True)  # queries with no key left
        if dead.any():  # a left-padded query attends to itself alone, so the batch stays finite
            q_idx = torch.arange(S - T, S, device=keep.device)
            itself = q_idx[:, None] == torch.arange(S, device=keep.device)[None, :]  # (T, S)
            full = torch.where(dead & itself, 0.0, full)
        return full

    def _eager(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(Q K^T / sqrt(hs) + mask) V, spelled out (Vaswani et al., 2017, eq. 1)."""
        groups = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(groups, dim=1)  # (B, nh, S, hs)
        v = v.repeat_interleave(groups, dim=1)
        T, S = q.shape[2], k.shape[2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_size)  # (B, nh, T, S)
        if mask is not None:
            scores = scores + mask.to(scores.dtype)
        elif self.causal and T > 1:
            causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
            scores = scores.masked_fill(~causal, float("-inf"))
        weights = scores.float().softmax(dim=-1).to(q.dtype)
        return F.dropout(weights, dropout, self.training) @ v, weights  # (B, nh, T, hs)
