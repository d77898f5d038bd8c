"""A preallocated key/value cache for incremental decoding.

During generation each new token attends to the keys and values of all the
tokens before it. Recomputing them every step costs O(T^2) per token; the
cache stores them once. Every layer writes its new keys and values at the
same offset, and the model advances the shared length after a forward pass.
"""

import torch


class KVCache:
    """Keys and values for ``n_layers`` layers, each of shape (B, nkv, max_len, hs)."""

    static = False  # see StaticKVCache

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

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """The positions (T,) of the next T tokens."""
        return torch.arange(self.length, self.length + T, device=device)

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


class StaticKVCache(KVCache):
    """A KV cache whose shapes never change, for a compiled decode step.

    :class:`KVCache` hands attention the keys and values stored so far, a shape that grows
    by one every step, and its length is a Python int: ``torch.compile`` would compile the
    step again for every length. Here the position is a one-element tensor updated in place,
    attention always receives the whole (B, nkv, max_len, hs) buffers, and it masks the
    slots beyond the position. One compiled step then serves every position. The price is
    attending over max_len slots instead of the filled ones, which is small next to reading
    the weights for the short contexts where compiling pays (see ``generate_ids(compile=)``).
    """

    static = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.k[0].device)

    @property
    def length(self) -> int:
        return int(self.pos)

    @length.setter
    def length(self, value: int) -> None:
        if hasattr(self, "pos"):
            self.pos.fill_(value)

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        return self.pos + torch.arange(T, device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``/``v`` (B, nkv, T, hs) at the current position; return the whole buffers."""
        at = self.positions(k.shape[2], k.device)
        self.k[layer].index_copy_(2, at, k)
        self.v[layer].index_copy_(2, at, v)
        return self.k[layer], self.v[layer]

    def advance(self, n: int) -> None:
        self.pos += n

    def reorder(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("a static cache serves one decoding stream; use KVCache")

    def copy_from(self, cache: KVCache) -> None:
        """Take over the keys, values and length of a filled :class:`KVCache` (a prefill is
        faster there: no mask over the empty slots)."""
        n = cache.length
        for mine, theirs in zip(self.k + self.v, cache.k + cache.v, strict=True):
            mine[:, :, :n] = theirs[:, :, :n]
        self.length = n
