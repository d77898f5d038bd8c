"""Images as token sequences: cut into patches, each projected to one vector (ViT, section 3.1).

An image (B, C, H, W) becomes (B, N, C·P·P) with N = (H/P)·(W/P) non-overlapping P x P
patches in row-major order (left to right, then top to bottom), each flattened channel
first, then row, then column - the order of a ``Conv2d(C, D, P, stride=P)`` weight viewed as
(D, C·P·P), so the projection here and that convolution are the same function.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C·P·P), patches in row-major order."""
    B, C, H, W = images.shape
    P = patch_size
    x = images.reshape(B, C, H // P, P, W // P, P)  # (B, C, gh, P, gw, P)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // P) * (W // P), C * P * P)


class PatchEmbedding(nn.Module):
    """Non-overlapping ``patch_size`` x ``patch_size`` patches, each a linear projection to
    ``d_model``: (B, C, H, W) -> (B, N, D)."""

    def __init__(self, channels: int, patch_size: int, d_model: int, bias: bool = True) -> None:
        super().__init__()
        self.channels, self.patch_size = channels, patch_size
        self.proj = nn.Linear(channels * patch_size * patch_size, d_model, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(f"expected images (B, {self.channels}, H, W), got "
                             f"{tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size "
                             f"{self.patch_size}")
        return self.proj(patchify(images, self.patch_size))  # (B, N, D)


def sinusoid_table_2d(grid: int, d_model: int) -> torch.Tensor:
    """Fixed 2-D positions for a ``grid`` x ``grid`` of patches, (grid², d_model): the first
    half of each vector is the 1-D sinusoids of the patch's row, the second half those of its
    column (as MAE and the ViT paper's 2-D variant), so rows and columns are told apart."""
    if d_model % 4:
        raise ValueError(f"2-D sinusoidal positions need d_model divisible by 4, got {d_model}")
    half = d_model // 2
    inv = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * (-math.log(10000.0) / half))
    steps = torch.arange(grid, dtype=torch.float32)[:, None] * inv  # (grid, half / 2)
    one_d = torch.cat([torch.sin(steps), torch.cos(steps)], dim=1)  # (grid, half)
    rows = one_d[:, None, :].expand(grid, grid, half)
    cols = one_d[None, :, :].expand(grid, grid, half)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, d_model)
