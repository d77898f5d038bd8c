"""What every training task shares: the :class:`Task` protocol, the run's tokenizer, the mean
validation loss. The tasks themselves are in :mod:`attnkit.train.tasks` (the LM task) and
the family modules beside it."""

from __future__ import annotations

import dataclasses
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

    def report(self, model: torch.nn.Module) -> str | None:
        """What ``attnkit train`` prints after the run (a classifier's confusion matrix), or
        None."""


def build_tokenizer(cfg: RunConfig, run_dir: Path, resume: bool, text: str | None,
                    specials: tuple[str, ...] = ()):
    """The run's tokenizer: read back on resume, otherwise trained/loaded per ``data.tokenizer``."""
    if resume:
        return load_tokenizer(run_dir / "tokenizer.json")
    if cfg.data.vocab_size is None and cfg.data.tokenizer == "bpe":  # data.vocab_size's default
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, vocab_size=2048))
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


def predictions(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int,
                device: torch.device, autocast=None) -> torch.Tensor:
    """``model(inputs)[0]`` in eval mode without gradients, ``batch_size`` rows at a time,
    as fp32 on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for chunk in inputs.split(max(batch_size, 1)):
                if autocast is None:
                    logits, _ = model(chunk.to(device))
                else:
                    with autocast():
                        logits, _ = model(chunk.to(device))
                out.append(logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def confusion_report(labels: list[str], truth: torch.Tensor, guess: torch.Tensor,
                     split: str) -> str:
    """``split`` accuracy, then the confusion matrix: a row per true class, a column per
    predicted class."""
    n = len(labels)
    matrix = torch.zeros(n, n, dtype=torch.long)
    matrix.index_put_((truth, guess), torch.ones_like(truth), accumulate=True)
    right = int(matrix.diag().sum())
    names = [name if len(name) <= 8 else name[:7] + "~" for name in labels]
    width = max(4, *(len(x) for x in names), len(str(int(matrix.max()))))
    lines = [f"{split} accuracy {right / max(len(truth), 1):.2%} ({right}/{len(truth)})",
             "confusion matrix (rows: true class, columns: predicted)",
             " " * width + " " + " ".join(x.rjust(width) for x in names)]
    for name, row in zip(names, matrix.tolist()):
        lines.append(name.rjust(width) + " " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
