"""The sequence-to-sequence task (``data.task=seq2seq``): pairs in, teacher forcing out.

A pair (source, target) becomes, with the tokenizer's special tokens::

    src_ids    = source + [eos]          src_mask = 1 on those tokens, 0 on padding
    input_ids  = [bos] + target          (the decoder's inputs)
    targets    = target + [eos]          (-100 on padding, ignored by the loss)

Batches are drawn with replacement from a generator seeded by (seed, step,
micro, split), so a resumed run sees exactly the batches of an uninterrupted
one. Evaluation reports the validation loss (label-smoothed, as in training)
and the exact-match rate of greedy decoding on a fixed subset of the
validation pairs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnkit.config import RunConfig
from attnkit.data import batch_generator
from attnkit.data.pairs import (
    SPECIALS,
    SPLITS,
    load_parallel,
    pad_batch,
    source_batch,
    special_ids,
    split_name,
)
from attnkit.errors import AttnkitError
from attnkit.generate.beam import greedy_seq2seq
from attnkit.train.task_base import build_tokenizer, mean_loss

EXACT_MATCH_PAIRS = 256  # validation pairs decoded at every evaluation
SAMPLE_WIDTH = 60  # characters of a source or prediction shown in samples


def seq2seq_tokenizer(cfg: RunConfig, run_dir: Path, resume: bool, text: str | None):
    """The run's tokenizer with pad, bos and eos: read back on resume, else built from the data."""
    tokenizer = build_tokenizer(cfg, run_dir, resume, text, SPECIALS)
    lacking = [n for n in SPECIALS if n not in getattr(tokenizer, "special_tokens", {})]
    if lacking and not resume and hasattr(tokenizer, "with_specials"):
        tokenizer = tokenizer.with_specials(SPECIALS)
    special_ids(tokenizer)  # refuses a tokenizer without them
    return tokenizer


class Seq2SeqTask:
    """Teacher-forced training on parallel pairs; exact match by greedy decoding."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool) -> None:
        if cfg.model.family != "seq2seq":
            raise AttnkitError(f"data.task=seq2seq needs an encoder-decoder, but model.family is "
                               f"'{cfg.model.family}' (set --model.family=seq2seq)")
        self.cfg = cfg
        self.data = load_parallel(cfg.data.path, cfg.data.val_fraction)
        sep = "" if cfg.data.tokenizer == "char" else "\n"  # no newline in a char vocabulary
        self.tokenizer = seq2seq_tokenizer(cfg, Path(run_dir), resume,
                                           None if resume else self.data.text(sep))
        self.pad_id, self.bos_id, self.eos_id = special_ids(self.tokenizer)
        encode = self.tokenizer.encode
        self.encoded = {split: [(encode(s) + [self.eos_id], encode(t))
                                for s, t in self.data.split(split)] for split in SPLITS}
        ctx = cfg.model.context_length
        for side, length in (("source", lambda p: len(p[0])), ("target", lambda p: len(p[1]) + 1)):
            longest = max(length(p) for pairs in self.encoded.values() for p in pairs)
            if longest > ctx:
                raise AttnkitError(f"the longest {side} is {longest} tokens (with EOS) but "
                                   f"model.context_length is {ctx} (raise --model.context_length "
                                   f"to at least {longest}, or shorten the data)")

    def describe(self) -> str:
        specials = ", ".join(SPECIALS)
        return (f"data: {self.data.origin} | {self.tokenizer.kind} tokenizer, vocab "
                f"{self.tokenizer.vocab_size} (with {specials}) | {self.data.describe()}")

    def collate(self, pairs: list[tuple[list[int], list[int]]], device: torch.device
                ) -> dict[str, torch.Tensor]:
        """Encoded (source, target) pairs -> keyword arguments for ``model(**batch)``."""
        src_ids, src_mask = source_batch([s for s, _ in pairs], self.pad_id, device)
        input_ids = pad_batch([[self.bos_id] + t for _, t in pairs], self.pad_id, device)
        targets = pad_batch([t + [self.eos_id] for _, t in pairs], -100, device)
        return {"input_ids": input_ids, "targets": targets, "src_ids": src_ids,
                "src_mask": src_mask}

    def batch(self, split: str, step: int, micro: int, batch_size: int,
              device: torch.device) -> dict[str, torch.Tensor]:
        pairs = self.encoded[split_name(split)]
        g = batch_generator(self.cfg.train.seed, step, micro, split)
        idx = torch.randint(len(pairs), (batch_size,), generator=g).tolist()
        return self.collate([pairs[i] for i in idx], device)

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        """Source tokens plus target tokens, padding excluded."""
        return int(batch["src_mask"].sum()) + int((batch["targets"] != -100).sum())

    def predict(self, model: torch.nn.Module, sources: list[list[int]], batch_size: int = 128
                ) -> list[list[int]]:
        """Greedy outputs (ids without EOS) for encoded sources."""
        model = getattr(model, "_orig_mod", model)  # decode with the plain module, not compiled
        device = next(model.parameters()).device
        out: list[list[int]] = []
        for i in range(0, len(sources), batch_size):
            src_ids, src_mask = source_batch(sources[i:i + batch_size], self.pad_id, device)
            out += greedy_seq2seq(model, src_ids, src_mask, bos_id=self.bos_id, eos_id=self.eos_id,
                                  max_new_tokens=self.cfg.model.context_length)
        return out

    def evaluate(self, model, autocast, batch_size, n_batches, device) -> dict[str, float]:
        """Validation loss on the same ``n_batches`` batches every time, and the exact-match
        rate of greedy decoding on the first :data:`EXACT_MATCH_PAIRS` validation pairs."""
        batches = (self.batch("valid", 0, i, batch_size, device) for i in range(n_batches))
        val_loss = mean_loss(model, batches, autocast)
        pairs = self.encoded["valid"][:EXACT_MATCH_PAIRS]
        with autocast():
            predictions = self.predict(model, [s for s, _ in pairs])
        exact = sum(p == t for p, (_, t) in zip(predictions, pairs)) / max(len(pairs), 1)
        return {"val_loss": val_loss, "exact_match": exact}

    def report(self, model) -> None:
        """Nothing beyond the validation loss."""
        return None

    def samples(self, model, n: int, max_new_tokens: int, seed: int) -> list[str]:
        """``source -> prediction`` for the first ``n`` validation pairs (greedy), with the
        expected target where the prediction differs."""
        del max_new_tokens, seed  # greedy decoding stops at EOS or the context length
        pairs = self.data.valid[:n]
        predictions = self.predict(model, [s for s, _ in self.encoded["valid"][:n]])
        lines = []
        for (source, target), ids in zip(pairs, predictions):
            output = self.tokenizer.decode(ids)
            line = f"{_clip(source)} -> {_clip(output)}"
            lines.append(line if output == target else f"{line}   (expected {_clip(target)})")
        return lines


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_WIDTH else text[:SAMPLE_WIDTH - 3] + "..."
