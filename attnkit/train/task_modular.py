"""The modular-arithmetic task (``data.task=modular``, ``data.path=modular:OP[:p=..:train=..]``):
predict ``c`` after ``a OP b =``, the setting in which Power et al. (2022) saw grokking.

A batch is ``batch_size`` training equations drawn without replacement (all of them, in a
seeded order, once ``batch_size`` reaches the training set: full-batch training); only the
token after ``=`` is scored. Evaluation uses every equation, not a sample: the loss and
exact-answer accuracy on all held-out equations (``val_loss``, ``val_accuracy``) and the
accuracy on all training equations (``train_accuracy``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnkit.config import RunConfig
from attnkit.data import batch_generator
from attnkit.data.modular import accuracy, as_tensors, parse_spec, split, vocabulary
from attnkit.errors import AttnkitError
from attnkit.train.task_base import predictions

ANSWER = -1  # the position whose prediction is scored: the one holding "="


class ModularTask:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool) -> None:
        from attnkit.tokenizers import load_tokenizer
        from attnkit.tokenizers.char import CharTokenizer

        self.cfg = cfg
        self.spec = parse_spec(cfg.data.path)
        if cfg.model.context_length < 4:
            raise AttnkitError(f"data.task=modular needs model.context_length >= 4 (a OP b =), got "
                               f"{cfg.model.context_length}")
        vocab = vocabulary(self.spec.p)
        self.tokenizer = load_tokenizer(run_dir / "tokenizer.json") if resume else CharTokenizer(vocab)
        if getattr(self.tokenizer, "chars", None) != vocab:
            raise AttnkitError(f"{run_dir / 'tokenizer.json'} does not match {self.spec}")
        train, held_out = split(self.spec)
        self.train_x, self.train_y = as_tensors(train, self.spec)  # (N, 4), (N,)
        self.val_x, self.val_y = as_tensors(held_out, self.spec)

    def describe(self) -> str:
        return (f"data: {self.spec} | {len(self.train_y):,} train / {len(self.val_y):,} held-out "
                f"equations | vocab {self.tokenizer.vocab_size} | loss on the answer only")

    def batch(self, split: str, step: int, micro: int, batch_size: int,
              device: torch.device) -> dict[str, torch.Tensor]:
        x, y = (self.train_x, self.train_y) if split == "train" else (self.val_x, self.val_y)
        g = batch_generator(self.cfg.train.seed, step, micro, split)
        order = torch.randperm(len(y), generator=g)
        rows = order.repeat(-(-batch_size // len(y)))[:batch_size]  # cycles if the set is small
        targets = torch.full(x[rows].shape, -100, dtype=torch.long)  # (B, 4); -100 is ignored
        targets[:, ANSWER] = y[rows]
        return {"input_ids": x[rows].to(device), "targets": targets.to(device)}

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def evaluate(self, model, autocast, batch_size, n_batches, device) -> dict[str, float]:
        """Loss and accuracy on every held-out equation, accuracy on every training one
        (``n_batches`` is not used: the sets are small)."""
        del n_batches
        size = max(batch_size, 4096)
        val = predictions(model, self.val_x, size, device, autocast)[:, ANSWER]  # (N, V)
        train = predictions(model, self.train_x, size, device, autocast)[:, ANSWER]
        val_loss = torch.nn.functional.cross_entropy(val, self.val_y).item()
        return {"val_loss": val_loss, "val_accuracy": accuracy(val, self.val_y),
                "train_accuracy": accuracy(train, self.train_y)}

    def samples(self, model, n: int, max_new_tokens: int, seed: int) -> list[str]:
        """A few held-out equations with the model's answer, as ``a+b=c (want d)``."""
        del max_new_tokens, seed
        got = predictions(model, self.val_x[:n], n, next(model.parameters()).device)[:, ANSWER]
        s = self.spec.symbol
        return [f"{a}{s}{b}={int(c)} (want {int(w)})" for (a, _, b, _), c, w in
                zip(self.val_x[:n].tolist(), got.argmax(-1), self.val_y[:n])]

    def report(self, model) -> str | None:
        return None
