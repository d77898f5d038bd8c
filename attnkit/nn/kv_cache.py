"""A preallocated key/value cache for incremental decoding.

During generation each new token attends to the keys and values of all the
tokens before it. Recomputing them every step costs O(T^2) per token; the
cache stores them once. Every layer writes its new keys and values at the
same offset, and the model advances the shared length after a forward pass.
"""

import torch


class KVCache:
    """Keys and values for ``n_layers`` layers, each of shape (B, nkv, max_len, hs)."""

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_size: int,
                 max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0  # tokens already stored, the same for every layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` of shape (B, nkv, T, hs) after the cached tokens; return all of them."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {end} were asked for")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, nkv, S, hs)

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, indices: torch.Tensor) -> None:
        """Keep batch rows ``indices`` (B',), in that order: beam search calls this to follow
        the surviving beams, and to copy one prompt's cache into every beam (B' may differ
        from B)."""
        self.k = [k.index_select(0, indices) for k in self.k]
        self.v = [v.index_select(0, indices) for v in self.v]

    def reset(self) -> None:
        self.length = 0
