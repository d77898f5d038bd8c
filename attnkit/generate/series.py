"""Sampled forecast paths from a ``data.task=series`` model (Chronos section 3.3): the
context is scaled and binned, ``horizon`` bin ids are sampled one at a time (pad and eos
masked out), and each path is decoded back to values with the context's scale."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnkit.data.series import N_SPECIAL, SeriesTokenizer
from attnkit.errors import AttnkitError

QUANTILES = (0.1, 0.5, 0.9)


@torch.no_grad()
def forecast_paths(model: torch.nn.Module, tokenizer: SeriesTokenizer, context: np.ndarray,
                   horizon: int, n_samples: int, seed: int, temperature: float = 1.0,
                   ) -> np.ndarray:
    """(n_samples, horizon) sampled future values after ``context`` (1-D). The same seed
    gives the same paths."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ctx = torch.tensor(np.asarray(context, dtype=np.float64))
    scale = SeriesTokenizer.scale(ctx)  # (1,)
    ids = tokenizer.encode(ctx, scale).repeat(n_samples, 1).to(device)  # (N, C)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    out = []
    for _ in range(horizon):
        logits, _ = model(ids)
        last = logits[:, -1, :tokenizer.vocab_size].float().cpu() / temperature  # (N, V)
        last[:, :N_SPECIAL] = float("-inf")
        nxt = torch.multinomial(torch.softmax(last, dim=-1), 1, generator=g)  # (N, 1)
        out.append(nxt)
        ids = torch.cat([ids, nxt.to(device)], dim=1)
    model.train(was_training)
    paths = tokenizer.decode(torch.cat(out, dim=1), scale.view(1, 1))  # (N, H)
    return paths.numpy()


def quantiles(paths: np.ndarray, levels: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """(len(levels), H) per-step quantiles of (N, H) paths; monotone in the level."""
    return np.quantile(paths, levels, axis=0)


@dataclass
class SeriesRun:
    model: Any
    tokenizer: Any
    config: Any


def load_series_run(run_dir: Path, device: str = "cpu") -> SeriesRun:
    """The model, series tokenizer and config of a ``data.task=series`` run."""
    from attnkit.config import config_from_dict
    from attnkit.data.series import SeriesTokenizer
    from attnkit.devices import resolve_device
    from attnkit.models import build_model
    from attnkit.runs import latest_checkpoint, read_run_config
    from attnkit.weights import load_weights

    if not Path(run_dir).is_dir():
        raise AttnkitError(f"run directory not found: {run_dir} (train one with `attnkit train "
                           f"series-synth`)")
    ckpt = latest_checkpoint(run_dir)
    cfg = config_from_dict(read_run_config(run_dir))
    if cfg.data.task != "series":
        raise AttnkitError(f"{run_dir} is a data.task={cfg.data.task} run; attnkit forecast needs "
                           f"a data.task=series run (train one with `attnkit train series-synth`)")
    tokenizer = SeriesTokenizer.load(Path(run_dir) / "tokenizer.json")
    model = build_model(cfg.model)
    load_weights(model, ckpt / "model.safetensors")
    model.to(resolve_device(device, "--device")).eval()
    return SeriesRun(model, tokenizer, cfg)
