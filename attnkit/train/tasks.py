"""Training tasks: what a batch is, how to evaluate, what to show at the end.

The trainer knows nothing about families or data formats. A task turns the
run's data into batches of keyword arguments for ``model(**batch)`` - which
returns ``(logits, loss)`` for every family - and evaluates a model. Tasks are
chosen by ``data.task`` through :data:`TASKS`; the family tasks live beside it
(``task_seq2seq``, ``task_encoder``) and share :mod:`attnkit.train.task_base`.

A task is constructed as ``Task(cfg, run_dir, resume)``. On a new run it builds
the tokenizer from the data; on resume it reads ``run_dir/tokenizer.json``.
It must make batches a pure function of ``(seed, step, micro, split)`` so that
a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnkit.config import RunConfig
from attnkit.data import batch_generator, check_length, get_batch, prepare_tokens, read_corpus
from attnkit.errors import AttnkitError
from attnkit.generate import stream
from attnkit.train.task_base import Task, build_tokenizer, mean_loss
from attnkit.train.task_encoder import ClassifyTask, MLMTask
from attnkit.train.task_image import ImageTask
from attnkit.train.task_modular import ModularTask
from attnkit.train.task_seq2seq import Seq2SeqTask
from attnkit.train.task_series import SeriesTask


class LMTask:
    """Next-token prediction on a corpus: windows of ``context_length + 1`` tokens."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool) -> None:
        self.cfg = cfg
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
        if cfg.data.format == "ids":  # integer-token files: the data gives the vocabulary
            from attnkit.data.ids import prepare_ids

            saved = build_tokenizer(cfg, run_dir, True, None) if resume else None
            self.data, self.tokenizer = prepare_ids(cfg.data.path, cfg.data.vocab_size,
                                                    cfg.data.separator_id, cache,
                                                    cfg.data.val_fraction, saved)
        else:
            text = None if resume else read_corpus(cfg.data.path)
            self.tokenizer = build_tokenizer(cfg, run_dir, resume, text)
            self.data = prepare_tokens(cfg.data.path, self.tokenizer, cache, cfg.data.val_fraction)
        check_length(self.data, cfg.model.context_length)
        self.marker = self._marker_id(cfg.data.loss_after)

    def _marker_id(self, marker: str | None) -> int | None:
        """The token id of ``data.loss_after``, which must be exactly one token."""
        if marker is None:
            return None
        try:
            ids = self.tokenizer.encode(marker)
        except AttnkitError:
            ids = []
        if len(ids) != 1:
            raise AttnkitError(f"data.loss_after={marker!r} must be exactly one token of the "
                               f"{self.tokenizer.kind} tokenizer, got {len(ids)} (use a single "
                               f"character that occurs in the corpus)")
        return ids[0]

    def describe(self) -> str:
        scored = "" if self.marker is None else \
            f" | loss on the token after {self.cfg.data.loss_after!r} only"
        return (f"data: {self.cfg.data.path} | {self.tokenizer.kind} tokenizer, vocab "
                f"{self.tokenizer.vocab_size} | {len(self.data.train):,} train / "
                f"{len(self.data.val):,} val tokens{scored}")

    def batch(self, split: str, step: int, micro: int, batch_size: int,
              device: torch.device) -> dict[str, torch.Tensor]:
        tokens = self.data.train if split == "train" else self.data.val
        g = batch_generator(self.cfg.train.seed, step, micro, split)
        x, y = get_batch(tokens, batch_size, self.cfg.model.context_length, g, device)
        if self.marker is not None:  # only the answers count; -100 is ignored by the loss
            y = y.masked_fill(x != self.marker, -100)
        return {"input_ids": x, "targets": y}

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def evaluate(self, model, autocast, batch_size, n_batches, device) -> dict[str, float]:
        """Validation loss on the same ``n_batches`` batches at every evaluation."""
        batches = (self.batch("val", 0, i, batch_size, device) for i in range(n_batches))
        return {"val_loss": mean_loss(model, batches, autocast)}

    def report(self, model) -> None:
        """Nothing beyond the validation loss."""
        return None

    def samples(self, model, n: int, max_new_tokens: int, seed: int) -> list[str]:
        """``n`` samples from a newline prompt, for a look at what the model learned."""
        try:
            prompt = "\n"
            ok = bool(self.tokenizer.encode(prompt))  # WordPiece drops whitespace: []
        except AttnkitError:  # a char vocabulary without newlines
            ok = False
        if not ok:  # start from the corpus instead
            prompt = self.tokenizer.decode([int(t) for t in self.data.train[:4]])
        return ["".join(stream(model, prompt, max_new_tokens, tokenizer=self.tokenizer,
                               temperature=0.8, top_k=40, seed=seed + i)) for i in range(n)]


TASKS: dict[str, type] = {"lm": LMTask, "seq2seq": Seq2SeqTask, "mlm": MLMTask,
                          "classify": ClassifyTask, "image": ImageTask, "series": SeriesTask,
                          "modular": ModularTask}


def build_task(cfg: RunConfig, run_dir: Path, resume: bool) -> Task:
    if cfg.data.task not in TASKS:
        raise AttnkitError(f"data.task '{cfg.data.task}' is not available in this build "
                           f"(available: {', '.join(TASKS)})")
    return TASKS[cfg.data.task](cfg, run_dir, resume)


__all__ = ["TASKS", "Task", "build_task", "build_tokenizer", "mean_loss", "LMTask"]
