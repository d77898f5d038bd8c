"""The numbers behind ``attnkit inspect`` on an image model (torch only, no plotting).

- :func:`class_probabilities`: ``softmax(logits)`` over the classes for one image.
- :func:`attention_rollout`: attention rollout (Abnar & Zuidema 2020, "Quantifying Attention
  Flow in Transformers", section 3): how much each output token draws on each *input* token
  through all the layers so far, not just through the last one.
- :func:`patch_relevance`: the row of a rollout that the classifier reads, over the patches,
  on the patch grid.
- :func:`upsample`: a patch grid stretched to the image's pixels, to lay over the image.
- :func:`display_image`: pixels in [-1, 1] (B or not, C, H, W) -> an array matplotlib draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def class_probabilities(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Class probabilities (L,) of one image (C, H, W), float32 on CPU."""
    device = next(model.parameters()).device
    logits, _ = model(pixel_values[None].to(device))  # (1, L)
    return torch.softmax(logits[0].float(), dim=-1).cpu()


@torch.no_grad()
def attention_maps(model, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Attention weights of every layer for one image (C, H, W): (nh, T, T) each, float32 on CPU."""
    device = next(model.parameters()).device
    return [m[0].float().cpu() for m in model.attention_maps(pixel_values[None].to(device))]


def attention_rollout(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout after each layer: per layer ``maps[l]`` (..., nh, T, T) -> (L, ..., T, T).

    Each layer's attention is averaged over its heads and the identity added for the residual
    connection, ``Ã = (mean_h A + I) / 2`` (the rows renormalised: each row of A sums to 1);
    the rollout is the product ``R_l = Ã_l · Ã_{l-1} ··· Ã_0``, so row i of ``R_l`` says how
    much token i after layer l draws on each input token. Every row of every ``R_l`` sums to 1.
    """
    if len(maps) == 0:
        raise ValueError("attention_rollout needs the attention of at least one layer")
    rollouts = []
    rollout = None
    for weights in maps:
        a = weights.float().mean(dim=-3)  # (..., T, T): the heads averaged
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a + eye  # the residual stream carries each token's own input forward
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout  # (..., T, T)
        rollouts.append(rollout)
    return torch.stack(rollouts)  # (L, ..., T, T)


def patch_relevance(rollout: torch.Tensor, pool: str, grid: int) -> torch.Tensor:
    """What the classifier reads, over the patches: (..., T, T) -> (..., grid, grid).

    With pool ``cls`` the class token's row (the class token is first; the patches are the last
    ``grid²`` tokens); with ``mean`` the mean of the patch rows, since the classifier reads the
    mean of the patch vectors. The values are the rollout's weights on the patches, unscaled:
    with ``cls`` they sum to less than 1 (the rest is on the class token's own input)."""
    n = grid * grid
    T = rollout.shape[-1]
    if T < n:
        raise ValueError(f"a rollout over {T} tokens has no {grid}x{grid} grid of patches")
    first = T - n  # the tokens before the patches (the class token)
    if pool == "cls":
        if first < 1:
            raise ValueError("pool 'cls' needs a class token before the patches")
        row = rollout[..., 0, first:]  # (..., N)
    elif pool == "mean":
        row = rollout[..., first:, first:].mean(dim=-2)  # (..., N)
    else:
        raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
    return row.reshape(*row.shape[:-1], grid, grid)  # (..., g, g): patches are row-major


def upsample(grid: torch.Tensor, size: int, mode: str = "nearest") -> torch.Tensor:
    """A (g, g) patch grid -> (size, size) pixels. ``nearest`` (the default) gives every pixel
    its own patch's value: the rollout has one number per patch, and a smooth (``bilinear``)
    map would suggest detail inside a patch that it does not have."""
    x = grid.float()[None, None]  # (1, 1, g, g)
    extra = {} if mode == "nearest" else {"align_corners": False}
    return torch.nn.functional.interpolate(x, size=(size, size), mode=mode, **extra)[0, 0]


def display_image(pixel_values: torch.Tensor):
    """Pixels (C, H, W) in [-1, 1] -> a NumPy array in [0, 1]: (H, W) for grey, (H, W, 3)."""
    x = ((pixel_values.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()  # (H, W[, 3])
