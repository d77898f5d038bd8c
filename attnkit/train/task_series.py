"""``data.task=series``: next-token prediction on tokenised time-series windows (Chronos).

A window is ``context_length + 1`` values; it is scaled by the mean |x| of its first
``context_length + 1 - data.horizon`` values (the context a forecast sees) and binned by
:class:`attnkit.data.series.SeriesTokenizer`. Training data is ``data.path``: ``kernelsynth``
and/or series files, comma-separated; real series lose their last horizon to the held-out test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnkit.config import RunConfig
from attnkit.data import batch_generator
from attnkit.data.series import SeriesTokenizer, training_series, window_batch
from attnkit.errors import AttnkitError
from attnkit.train.task_base import mean_loss


def check_horizon(horizon: int, context_length: int) -> int:
    """The context a forecast of ``horizon`` steps sees in a window of ``context_length``
    values (the model's ``context_length + 1``: the last value is never fed back)."""
    if horizon < 1:
        raise AttnkitError(f"the horizon must be at least 1, got {horizon}")
    if horizon >= context_length:
        raise AttnkitError(f"horizon {horizon} is not shorter than the model's window of "
                           f"{context_length} values (use a horizon below {context_length}, or "
                           f"train with a larger model.context_length)")
    return context_length - horizon


class SeriesTask:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool) -> None:
        self.cfg = cfg
        data, T = cfg.data, cfg.model.context_length
        self.context = check_horizon(data.horizon, T + 1)
        self.tokenizer = (SeriesTokenizer.load(run_dir / "tokenizer.json") if resume
                          else SeriesTokenizer(data.bins))
        series = training_series(data.path, data.column, data.nan, data.horizon, cfg.train.seed)
        self.train, self.val = [], []
        for s in series:  # the last val_fraction of each series, with a window of overlap
            cut = int(len(s) * (1 - data.val_fraction))
            self.train.append(s[:cut])
            if 0 < cut < len(s):
                self.val.append(s[max(cut - T, 0):])
        self.val = self.val or self.train

    def describe(self) -> str:
        points = sum(len(s) for s in self.train)
        return (f"data: {self.cfg.data.path} | series tokenizer, {self.tokenizer.n_bins} bins | "
                f"{len(self.train)} series, {points:,} train points | horizon "
                f"{self.cfg.data.horizon}")

    def batch(self, split: str, step: int, micro: int, batch_size: int,
              device: torch.device) -> dict[str, torch.Tensor]:
        g = batch_generator(self.cfg.train.seed, step, micro, split)
        series = self.train if split == "train" else self.val
        x, y = window_batch(series, self.cfg.model.context_length, batch_size, self.context,
                            self.tokenizer, g)
        return {"input_ids": x.to(device), "targets": y.to(device)}

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def evaluate(self, model, autocast, batch_size, n_batches, device) -> dict[str, float]:
        batches = (self.batch("val", 0, i, batch_size, device) for i in range(n_batches))
        return {"val_loss": mean_loss(model, batches, autocast)}

    def samples(self, model, n: int, max_new_tokens: int, seed: int) -> list[str]:
        """The median of ``n`` sampled paths after the start of a validation series."""
        from attnkit.generate.series import forecast_paths

        s = self.val[0]
        ctx = s[:self.context]
        h = min(self.cfg.data.horizon, 8)
        paths = forecast_paths(model, self.tokenizer, ctx, h, max(n, 1), seed)
        med = np.median(paths, axis=0)
        return ["median " + " ".join(f"{v:.3g}" for v in med) + " | truth "
                + " ".join(f"{v:.3g}" for v in s[self.context:self.context + h])]

    def report(self, model) -> None:
        return None
