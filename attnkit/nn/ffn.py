"""Position-wise feed-forward networks, chosen by name through :data:`FFNS`.

``gelu``, ``gelu_tanh`` and ``relu`` are the two-layer MLP of the 2017 paper and GPT-2;
``swiglu`` and ``geglu`` are the gated variants of Shazeer (2020), used by
Llama and friends.
"""

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``down(act(up(x)))`` with a hidden width of ``hidden`` (4 * d_model in the paper)."""

    def __init__(self, d_model: int, hidden: int, activation: str, bias: bool = True) -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class GLU(nn.Module):
    """Gated linear unit FFN: ``down(act(gate(x)) * up(x))`` (Shazeer, 2020, eq. 5-6)."""

    def __init__(self, d_model: int, hidden: int, activation: str, bias: bool = True) -> None:
        super().__init__()
        self.act = ACTIVATIONS[activation]
        self.gate_proj = nn.Linear(d_model, hidden, bias=bias)
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation (Hendrycks & Gimpel, 2016, section 2), GPT-2's activation
    ("gelu_new" in Hugging Face); ``gelu`` is the exact erf form."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": gelu_tanh, "relu": F.relu, "silu": F.silu}

# name -> (class, activation, is_gated)
FFNS: dict[str, tuple[type[nn.Module], str, bool]] = {
    "gelu": (MLP, "gelu", False),
    "gelu_tanh": (MLP, "gelu_tanh", False),
    "relu": (MLP, "relu", False),
    "swiglu": (GLU, "silu", True),
    "geglu": (GLU, "gelu", True),
}


def ffn_hidden_size(d_model: int, ffn: str, multiple_of: int = 32) -> int:
    """The default hidden width for ``ffn``.

    Plain MLPs use 4 * d_model. Gated variants have three matrices instead of
    two, so they use 2/3 of that to keep the parameter count equal (Shazeer,
    2020), rounded up to a multiple of ``multiple_of`` for efficient kernels.
    """
    if not FFNS[ffn][2]:
        return 4 * d_model
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def build_ffn(ffn: str, d_model: int, hidden: int, bias: bool) -> nn.Module:
    cls, activation, _ = FFNS[ffn]
    return cls(d_model, hidden, activation, bias=bias)
