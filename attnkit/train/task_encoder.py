"""Encoder tasks: masked-language-model pretraining (``mlm``) and text classification
(``classify``). Both follow the :class:`~attnkit.train.task_base.Task` protocol: every batch
is a pure function of ``(seed, step, micro, split)``, masking included, so a resumed
run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from attnkit.config import EncoderConfig, RunConfig
from attnkit.data import batch_generator, check_length, get_batch, prepare_tokens, read_corpus
from attnkit.data.labeled import (
    encode_text,
    label_names,
    pad_batch,
    read_labeled,
    split_indices,
)
from attnkit.errors import AttnkitError
from attnkit.runs import read_labels, save_labels
from attnkit.train.task_base import build_tokenizer, confusion_report


def _require_encoder(cfg: RunConfig) -> None:
    if not isinstance(cfg.model, EncoderConfig):
        raise AttnkitError(f"data.task={cfg.data.task} trains an encoder, but model.family is "
                           f"{cfg.model.family} (add --model.family=encoder)")


def mask_tokens(ids: torch.Tensor, generator: torch.Generator, probability: float, mask_id: int,
                replacement_ids: torch.Tensor, maskable: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (Devlin et al., 2019, section 3.1) of ``ids`` (B, T).

    Each ``maskable`` token is chosen with ``probability``; a chosen token becomes
    ``mask_id`` 80% of the time, a random id from ``replacement_ids`` 10%, and stays as
    it is 10%. Returns ``(inputs, targets)``, targets -100 where nothing is predicted.
    Every row with a maskable token predicts at least one, so no loss is ever empty.
    All randomness comes from ``generator``.
    """
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & maskable
    # A row that drew nothing gets its maskable token with the highest random score.
    scores = torch.rand(ids.shape, generator=generator).masked_fill(~maskable, -1.0)
    forced = torch.zeros_like(chosen).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
    chosen |= forced & maskable & ~chosen.any(dim=1, keepdim=True)
    targets = ids.masked_fill(~chosen, -100)
    action = torch.rand(ids.shape, generator=generator)
    inputs = ids.masked_fill(chosen & (action < 0.8), mask_id)
    swap = chosen & (action >= 0.8) & (action < 0.9)
    picks = torch.randint(len(replacement_ids), ids.shape, generator=generator)
    inputs = torch.where(swap, replacement_ids[picks], inputs)
    return inputs, targets


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Evaluation mode without gradients for the block, then the previous mode back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class MLMTask:
    """Masked-LM pretraining on a corpus: windows of ``context_length - 2`` tokens framed by
    ``[CLS] ... [SEP]``, masked per ``data.mlm_probability`` (BERT's 80/10/10)."""

    SPECIALS = ("pad", "mask", "cls", "sep")

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool) -> None:
        _require_encoder(cfg)
        if not 0.0 < cfg.data.mlm_probability < 1.0:
            raise AttnkitError(f"data.mlm_probability must be in (0, 1), got "
                               f"{cfg.data.mlm_probability}")
        self.cfg = cfg
        text = None if resume else read_corpus(cfg.data.path)
        self.tokenizer = build_tokenizer(cfg, run_dir, resume, text, self.SPECIALS)
        specials = self.tokenizer.special_tokens
        if "mask" not in specials:
            raise AttnkitError("the tokenizer has no mask token, which masked-LM training needs "
                               "(use a tokenizer kind attnkit trains: --data.tokenizer=char, "
                               "byte or bpe)")
        self.mask_id = specials["mask"]
        self.cls = [specials["cls"]] if "cls" in specials else []
        self.sep = [specials["sep"]] if "sep" in specials else []
        self.window = cfg.model.context_length - len(self.cls) - len(self.sep)
        if self.window < 1:
            raise AttnkitError(f"model.context_length={cfg.model.context_length} leaves no room "
                               f"for text between [CLS] and [SEP] (raise it)")
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
        self.data = prepare_tokens(cfg.data.path, self.tokenizer, cache, cfg.data.val_fraction)
        check_length(self.data, self.window)
        special_ids = torch.tensor(sorted(set(specials.values())))
        everything = torch.arange(self.tokenizer.vocab_size)
        self.special_ids = special_ids
        self.replacement_ids = everything[~torch.isin(everything, special_ids)]

    def describe(self) -> str:
        return (f"data: {self.cfg.data.path} | masked LM, {self.cfg.data.mlm_probability:.0%} "
                f"of tokens | {self.tokenizer.kind} tokenizer, vocab {self.tokenizer.vocab_size} "
                f"| {len(self.data.train):,} train / {len(self.data.val):,} val tokens")

    def _windows(self, split: str, g: torch.Generator, batch_size: int) -> torch.Tensor:
        tokens = self.data.train if split == "train" else self.data.val
        x, _ = get_batch(tokens, batch_size, self.window, g)  # (B, W)
        cls = torch.tensor(self.cls, dtype=torch.long).expand(batch_size, -1)
        sep = torch.tensor(self.sep, dtype=torch.long).expand(batch_size, -1)
        return torch.cat([cls, x, sep], dim=1)  # (B, T)

    def batch(self, split: str, step: int, micro: int, batch_size: int,
              device: torch.device) -> dict[str, torch.Tensor]:
        g = batch_generator(self.cfg.train.seed, step, micro, split)
        ids = self._windows(split, g, batch_size)
        maskable = ~torch.isin(ids, self.special_ids)
        inputs, targets = mask_tokens(ids, g, self.cfg.data.mlm_probability, self.mask_id,
                                      self.replacement_ids, maskable)
        return {"input_ids": inputs.to(device), "targets": targets.to(device)}

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def evaluate(self, model, autocast, batch_size, n_batches, device) -> dict[str, float]:
        """Loss and accuracy on the masked tokens of the same ``n_batches`` batches each time."""
        loss_sum, right, total = 0.0, 0, 0
        with _eval_mode(model):
            for i in range(n_batches):
                batch = self.batch("val", 0, i, batch_size, device)
                with autocast():
                    logits, loss = model(**batch)
                loss_sum += loss.item()
                predicted = batch["targets"] != -100
                right += (logits.argmax(-1)[predicted] == batch["targets"][predicted]).sum().item()
                total += predicted.sum().item()
        return {"val_loss": loss_sum / max(n_batches, 1), "accuracy": right / max(total, 1)}

    def report(self, model) -> None:
        """Nothing beyond the validation loss."""
        return None

    def samples(self, model, n: int, max_new_tokens: int, seed: int) -> list[str]:
        """For ``n`` validation windows spread over the split: the text with its masks shown
        as ``□``, and the model's fill-in."""
        g = batch_generator(seed, 0, 0, "samples")
        width = max(1, min(max_new_tokens, self.window))
        starts = torch.linspace(0, len(self.data.val) - width, n + 2)[1:-1].long().tolist()
        text = torch.tensor(np.stack([self.data.val[s:s + width] for s in starts]).astype(np.int64))
        ids = torch.cat([torch.tensor(self.cls, dtype=torch.long).expand(n, -1), text], dim=1)
        maskable = ~torch.isin(ids, self.special_ids)
        chosen = (torch.rand(ids.shape, generator=g) < self.cfg.data.mlm_probability) & maskable
        inputs = ids.masked_fill(chosen, self.mask_id)
        device = next(model.parameters()).device
        with _eval_mode(model):
            logits, _ = model(inputs.to(device), ids.to(device))
        predicted = logits.argmax(-1).cpu()
        out = []
        for row in range(n):
            filled = torch.where(chosen[row], predicted[row], ids[row])
            right = int((predicted[row] == ids[row])[chosen[row]].sum())
            out.append(f"masked: {self._show(ids[row], chosen[row])}\n"
                       f"model:  {self.tokenizer.decode(filled.tolist())}\n"
                       f"({right} of {int(chosen[row].sum())} masked tokens right)")
        return out

    def _show(self, ids: torch.Tensor, masked: torch.Tensor) -> str:
        """The text of ``ids`` (T,) with each masked token written as one ``□``."""
        pieces, run = [], []
        for token, hidden in zip(ids.tolist(), masked.tolist()):
            if hidden:
                pieces += [self.tokenizer.decode(run), "\u25a1"]
                run = []
            else:
                run.append(token)
        return "".join(pieces) + self.tokenizer.decode(run)


class ClassifyTask:
    """Text classification from a CSV or JSONL file (see :mod:`attnkit.data.labeled`):
    ``[CLS] text [SEP]`` truncated to ``context_length``, padded per batch."""

    SPECIALS = ("pad", "cls", "sep")

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool) -> None:
        _require_encoder(cfg)
        if cfg.data.path == "pydoc":
            raise AttnkitError("data.task=classify needs labelled examples (set --data.path to "
                               "a CSV file with a text,label header or a JSONL file)")
        self.cfg = cfg
        examples = read_labeled(cfg.data.path)
        texts = [t for t, _ in examples]
        if resume:
            self.labels = read_labels(run_dir)
            unknown = sorted({lab for _, lab in examples} - set(self.labels))
            if unknown:
                raise AttnkitError(f"{cfg.data.path} has labels the run was not trained on: "
                                   f"{', '.join(map(repr, unknown[:5]))} (resume with the same data)")
        else:
            self.labels = label_names((lab for _, lab in examples), where=cfg.data.path)
        if cfg.model.n_labels == 0:
            cfg.model.n_labels = len(self.labels)
        elif cfg.model.n_labels != len(self.labels):
            raise AttnkitError(f"model.n_labels={cfg.model.n_labels} but {cfg.data.path} has "
                               f"{len(self.labels)} labels (leave model.n_labels at 0 to match)")
        self.tokenizer = build_tokenizer(cfg, run_dir, resume, "\n".join(texts), self.SPECIALS)
        self.pad_id = self.tokenizer.special_tokens.get("pad", 0)
        index = {name: i for i, name in enumerate(self.labels)}
        self.encoded = [encode_text(self.tokenizer, t, cfg.model.context_length) for t in texts]
        self.label_ids = torch.tensor([index[lab] for _, lab in examples])
        self.texts = texts
        self.split = dict(zip(("train", "val"), split_indices(len(examples), cfg.data.val_fraction,
                                                              where=cfg.data.path)))
        if not resume:
            save_labels(run_dir, self.labels)

    def describe(self) -> str:
        n_train, n_val = len(self.split["train"]), len(self.split["val"])
        return (f"data: {self.cfg.data.path} | classify, {len(self.labels)} labels | "
                f"{self.tokenizer.kind} tokenizer, vocab {self.tokenizer.vocab_size} | "
                f"{n_train:,} train / {n_val:,} val examples")

    def _batch(self, rows: torch.Tensor, device) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([self.encoded[i] for i in rows.tolist()], self.pad_id, device)
        return {"input_ids": ids, "attention_mask": mask, "labels": self.label_ids[rows].to(device)}

    def batch(self, split: str, step: int, micro: int, batch_size: int,
              device: torch.device) -> dict[str, torch.Tensor]:
        pool = self.split[split]
        g = batch_generator(self.cfg.train.seed, step, micro, split)
        return self._batch(pool[torch.randint(len(pool), (batch_size,), generator=g)], device)

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def evaluate(self, model, autocast, batch_size, n_batches, device) -> dict[str, float]:
        """Loss and accuracy over the first ``n_batches * batch_size`` validation examples
        (all of them when there are fewer), in a fixed order."""
        rows = self.split["val"][: n_batches * batch_size]
        loss_sum, right = 0.0, 0
        with _eval_mode(model):
            for chunk in rows.split(batch_size):
                batch = self._batch(chunk, device)
                with autocast():
                    logits, loss = model(**batch)
                loss_sum += loss.item() * len(chunk)
                right += (logits.argmax(-1) == batch["labels"]).sum().item()
        return {"val_loss": loss_sum / len(rows), "accuracy": right / len(rows)}

    def report(self, model) -> str:
        """Validation accuracy and the confusion matrix."""
        rows = self.split["val"]
        device = next(model.parameters()).device
        guesses = []
        with _eval_mode(model):
            for chunk in rows.split(64):
                batch = self._batch(chunk, device)
                batch.pop("labels")
                guesses.append(model(**batch)[0].argmax(-1).cpu())
        return confusion_report(self.labels, self.label_ids[rows], torch.cat(guesses), "val")

    def samples(self, model, n: int, max_new_tokens: int, seed: int) -> list[str]:
        """The model's label for the first ``n`` validation examples."""
        rows = self.split["val"][:n]
        device = next(model.parameters()).device
        batch = self._batch(rows, device)
        with _eval_mode(model):
            logits, _ = model(**batch)
        out = []
        for row, guess in zip(rows.tolist(), logits.argmax(-1).tolist()):
            text = self.texts[row] if len(self.texts[row]) <= 80 else self.texts[row][:77] + "..."
            truth = self.labels[int(self.label_ids[row])]
            out.append(f"{text!r} -> {self.labels[guess]} (true: {truth})")
        return out
