"""Position information, chosen by name through ``pos`` in the model config.

Two kinds exist. *Additive* encodings (``learned``, ``sinusoidal``) are added
to the token embeddings once, at the bottom of the stack. *Relative* ones act
inside every attention layer: ``rope`` rotates queries and keys, ``alibi``
adds a distance penalty to the attention scores. ``none`` relies on the causal
mask alone (Haviv et al., 2022).
"""

import math

import torch
from torch import nn

ADDITIVE = ("learned", "sinusoidal")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")


class LearnedPositional(nn.Module):
    """A trained table of ``context_length`` position vectors (GPT-2)."""

    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(context_length, d_model))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.weight[positions]  # (T, C)


class SinusoidalPositional(nn.Module):
    """The fixed sines and cosines of *Attention Is All You Need*, section 3.5."""

    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", sinusoid_table(context_length, d_model), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling() and positions.max() >= self.table.shape[0]:
            # the formula has no length limit: extend.
            self.table = sinusoid_table(int(positions.max()) + 1, self.d_model).to(self.table)
        return self.table[positions]  # (T, C)


def sinusoid_table(length: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...); shape (length, d_model)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)[:, : d_model // 2]
    return table


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., 2021) in the "rotate half" layout.

    The head dimension is split into two halves that form the real and
    imaginary parts of ``hs / 2`` complex numbers; each is rotated by an angle
    proportional to the position. This is the layout Hugging Face Llama
    checkpoints use, so their q/k weights load without permutation.
    """

    def __init__(self, head_size: int, context_length: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_size = head_size
        self.theta = theta
        self._build(context_length)

    def _build(self, length: int, device: torch.device | None = None) -> None:
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_size, 2, device=device).float()
                                         / self.head_size))
        angles = torch.outer(torch.arange(length, device=device).float(), inv_freq)  # (L, hs/2)
        angles = torch.cat([angles, angles], dim=-1)  # (L, hs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` of shape (B, nh, T, hs) at ``positions`` of shape (T,) or, one row
        per batch element, (B, T)."""
        if not torch.compiler.is_compiling() and positions.max() >= self.cos.shape[0]:
            self._build(int(positions.max()) + 1, device=self.cos.device)
        cos = self.cos[positions].to(x.dtype)  # (T, hs) or (B, T, hs)
        sin = self.sin[positions].to(x.dtype)
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hs)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The per-head slopes of ALiBi (Press et al., 2022): a geometric sequence 2^(-8/n), ...

    For a head count that is not a power of two, the paper takes the slopes of
    the nearest lower power of two and interleaves every other slope of the
    next one.
    """

    def powers(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return torch.tensor(powers(n_heads))
    lower = 2 ** math.floor(math.log2(n_heads))
    extra = powers(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(powers(lower) + extra)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Additive score bias -slope * (i - j), shape (nh, T, S); causal masking is separate."""
    distance = (q_pos[:, None] - k_pos[None, :]).abs().float()  # (T, S)
    return -slopes[:, None, None] * distance[None]
