"""Cross-attention: the decoder's queries attend to the encoder's output (the "memory").

In *Attention Is All You Need* (section 3.2.3) every decoder layer has a second
attention sub-layer whose queries come from the decoder and whose keys and
values come from the encoder output. The source does not change while a
translation is generated, so its keys and values are projected once per layer
and kept in :class:`EncoderDecoderCache` beside the decoder's own KV cache.

Positions play no part here: the sinusoidal or learned encodings are already in
the memory, and RoPE or ALiBi measure distances within one sequence, which have
no meaning between a target and a source position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnkit.nn.attention import Attention
from attnkit.nn.kv_cache import KVCache


class EncoderDecoderCache(KVCache):
    """The decoder's self-attention KV cache (see :class:`KVCache`), plus for every layer
    the cross-attention keys and values (B, nkv, S, hs) and the source mask (B, S),
    filled by the first decoding step and reused by every later one."""

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_size: int,
                 max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(n_layers, batch_size, n_kv_heads, head_size, max_len, device, dtype)
        self.cross_k: list[torch.Tensor | None] = [None] * n_layers
        self.cross_v: list[torch.Tensor | None] = [None] * n_layers
        self.memory_mask: torch.Tensor | None = None  # (B, S), True for real source tokens

    @property
    def has_memory(self) -> bool:
        """Whether the cross-attention keys and values have been computed."""
        return self.cross_k[0] is not None

    def reorder(self, indices: torch.Tensor) -> None:
        super().reorder(indices)
        self.cross_k = [None if k is None else k.index_select(0, indices) for k in self.cross_k]
        self.cross_v = [None if v is None else v.index_select(0, indices) for v in self.cross_v]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, indices)

    def reset(self) -> None:
        """Empty the cache, source included, for a new batch of sources."""
        super().reset()
        self.cross_k = [None] * len(self.cross_k)
        self.cross_v = [None] * len(self.cross_v)
        self.memory_mask = None


class CrossAttention(Attention):
    """Multi-head attention from ``x`` (B, T, C) to ``memory`` (B, S, C), with grouped
    key/value heads and the same SDPA / eager back-ends as :class:`Attention`."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, *, bias: bool = True,
                 dropout: float = 0.0, backend: str = "sdpa") -> None:
        super().__init__(d_model, n_heads, n_kv_heads, bias=bias, dropout=dropout, causal=False,
                         rope=None, alibi=False, backend=backend)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, *,  # type: ignore[override]
                key_padding_mask: torch.Tensor | None = None,
                cache: EncoderDecoderCache | None = None, layer: int = 0,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, C) -> ((B, T, C), weights (B, nh, T, S) or None).

        ``key_padding_mask`` (B, S) is True for real source tokens. With a ``cache``
        that already holds this layer's keys and values, ``memory`` may be None;
        otherwise they are projected from ``memory`` and stored in the cache.
        """
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None and cache.cross_k[layer] is not None:
            k, v = cache.cross_k[layer], cache.cross_v[layer]  # (B, nkv, S, hs)
        else:
            if memory is None:
                raise ValueError("cross-attention needs the encoder output (memory) or a cache "
                                 "that holds its keys and values")
            S = memory.shape[1]
            k = self.k_proj(memory).view(B, S, self.n_kv_heads, self.head_size).transpose(1, 2)
            v = self.v_proj(memory).view(B, S, self.n_kv_heads, self.head_size).transpose(1, 2)
            if cache is not None:
                cache.cross_k[layer], cache.cross_v[layer] = k, v
        S = k.shape[2]
        mask = (None if key_padding_mask is None
                else self._with_padding(None, key_padding_mask, T, S))  # (B, 1, 1, S)
        dropout = self.dropout if self.training else 0.0
        if need_weights or self.backend == "eager":
            out, weights = self._eager(q, k, v, mask, dropout)
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 enable_gqa=self.n_kv_heads != self.n_heads)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_size)  # (B, T, C)
        return self.o_proj(out), weights
