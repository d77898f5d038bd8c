"""Normalisation layers, chosen by name through :data:`NORMS`."""

import torch
from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm (Ba et al., 2016) with an optional bias, as in GPT-2 and the 2017 paper."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(dim, eps=eps, bias=bias)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): no mean subtraction and no bias.

    Computed in float32 whatever the input dtype, because the mean of squares
    overflows or loses precision in half precision.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__()
        del bias  # RMSNorm has none; the argument keeps the constructor shape of NORMS uniform.
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


NORMS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}
