"""What every training task shares: the :class:`Task` protocol, the run's tokenizer, the mean
validation loss. The tasks themselves are in :mod:`attnkit.train.tasks` (the LM task) and
the family modules beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from attnkit.config import RunConfig
from attnkit.tokenizers import load_tokenizer, train_tokenizer


class Task(Protocol):
    tokenizer: Any

    def describe(self) -> str: ...

    def batch(self, split: str, step: int, micro: int, batch_size: int,
              device: torch.device) -> dict[str, torch.Tensor]: ...

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int: ...

    def evaluate(self, model: torch.nn.Module, autocast, batch_size: int,
                 n_batches: int, device: torch.device) -> dict[str, float]: ...

    def samples(self, model: torch.nn.Module, n: int, max_new_tokens: int,
                seed: int) -> list[str]: ...


def build_tokenizer(cfg: RunConfig, run_dir: Path, resume: bool, text: str | None,
                    specials: tuple[str, ...] = ()):
    """The run's tokenizer: read back on resume, otherwise trained/loaded per ``data.tokenizer``."""
    if resume:
        return load_tokenizer(run_dir / "tokenizer.json")
    try:
        from attnkit.tokenizers import resolve_tokenizer
    except ImportError:  # older tokenizer module: kinds only
        return train_tokenizer(cfg.data.tokenizer, text or "", cfg.data.vocab_size)
    return resolve_tokenizer(cfg.data.tokenizer, text, cfg.data.vocab_size, specials)


def mean_loss(model: torch.nn.Module, batches, autocast) -> float:
    """Mean of ``model(**batch)[1]`` over ``batches``, in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    losses = []
    with torch.no_grad():
        for batch in batches:
            with autocast():
                _, loss = model(**batch)
            losses.append(loss.item())
    model.train(was_training)
    return sum(losses) / max(len(losses), 1)
