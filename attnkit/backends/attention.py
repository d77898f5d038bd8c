"""The oneDNN back-end's attention: :class:`~attnkit.nn.Attention` with its two hooks
computed faster on a CPU, the same function to float rounding.

- :meth:`OneDNNAttention.project`: when a decode step's products go through packed weights
  (:meth:`OneDNNLinear.decodes_fast <attnkit.backends.onednn.OneDNNLinear.decodes_fast>`),
  the query, key and value weights are stacked and packed into one matrix (made once, remade
  when one of them changes), so a token reads them in one product: ~40 GB/s against ~31 for
  three 768 x 768 products on this project's machines.
- :meth:`OneDNNAttention.attend`: causal attention without a mask or dropout over
  ``causal.MIN_LENGTH`` or more positions, in fp32, goes through the block-causal kernel
  (:mod:`attnkit.backends.causal`); everything else through SDPA as the plain class does.
"""

from __future__ import annotations

import torch

from attnkit.backends import causal
from attnkit.backends.onednn import OneDNNLinear, onednn_linear, pack
from attnkit.nn.attention import Attention


class OneDNNAttention(Attention):
    """:class:`~attnkit.nn.Attention` (same parameters) with oneDNN's products on a CPU; its
    projections are :class:`~attnkit.backends.onednn.OneDNNLinear` (the swap makes them so)."""

    _qkv: tuple | None = None  # (weight keys, packed stacked weight, stacked bias)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        projs = (self.q_proj, self.k_proj, self.v_proj)
        q_proj = self.q_proj
        if not (isinstance(q_proj, OneDNNLinear) and q_proj.decodes_fast(x)):
            return super().project(x)
        key = tuple((p.weight.data_ptr(), p.weight._version) for p in projs)
        if self._qkv is None or self._qkv[0] != key:
            w = torch.cat([p.weight for p in projs])
            b = torch.cat([p.bias for p in projs]) if q_proj.bias is not None else None
            self._qkv = (key, pack(w), b)
        kv = self.n_kv_heads * self.head_size
        qkv = onednn_linear(x, self._qkv[1], self._qkv[2])  # (B, T, (nh + 2 nkv) hs)
        return qkv.split([self.n_heads * self.head_size, kv, kv], dim=-1)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               dropout: float) -> torch.Tensor:
        if self.causal and mask is None and dropout == 0.0 and causal.usable(q) \
                and q.shape[2] == k.shape[2]:  # queries and keys start together
            return causal.causal_attention(q, k, v)  # SDPA's function, oneDNN's products
        return super().attend(q, k, v, mask, dropout)
