"""Labelled text for classification, and texts made into padded encoder batches.

Two file formats, chosen by suffix:

- CSV (``.csv``): a header row naming a ``text`` and a ``label`` column (any order, other
  columns ignored), then one example per row; quoted fields may span lines.
- JSON Lines (``.jsonl``, ``.ndjson``, ``.json``): one object per line,
  ``{"text": "...", "label": "..."}``; blank lines are skipped.

Labels are names (strings; numbers are read as their text) mapped to ids in
sorted order - numerically when every name is an integer - so the mapping does
not depend on the order of the file. The run keeps it in ``labels.json``
(:func:`attnkit.runs.save_labels`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from attnkit.errors import AttnkitError

CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_FORMAT_HINT = ('a CSV file with a "text,label" header, or a JSONL file of '
                '{"text": ..., "label": ...} lines')


def read_labeled(path: str | Path) -> list[tuple[str, str]]:
    """``(text, label)`` pairs from a CSV or JSONL file, in file order.

    Raises :class:`AttnkitError` for a missing file, an unknown suffix, a CSV
    header without ``text`` or ``label``, a bad JSON line (``file:line``), a
    missing or empty label, and a file with no examples.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise AttnkitError(f"labelled data not found: {path} (pass {_FORMAT_HINT})")
    suffix = path.suffix.lower()
    try:
        if suffix in CSV_SUFFIXES:
            examples = _read_csv(path)
        elif suffix in JSONL_SUFFIXES:
            examples = _read_jsonl(path)
        else:
            raise AttnkitError(f"{path}: unknown format {suffix or '(no suffix)'!r} for "
                               f"classification data (pass {_FORMAT_HINT})")
    except UnicodeDecodeError as e:
        raise AttnkitError(f"{path} is not valid UTF-8 (bad byte at offset {e.start}); convert "
                           f"it to UTF-8") from None
    except OSError as e:
        raise AttnkitError(f"cannot read {path}: {e.strerror or e} (check the path and its "
                           f"permissions)") from None
    if not examples:
        raise AttnkitError(f"{path} has no examples, so the label set is empty (add rows with "
                           f"a text and a label)")
    return examples


def _label(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AttnkitError(f"{where}: label must be a string or an integer, got {value!r}")
    label = str(value).strip()
    if not label:
        raise AttnkitError(f"{where}: the label is empty (give every example a label)")
    return label


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: drop a byte-order mark
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise AttnkitError(f"{path} is empty (the first row must be a header naming the "
                               f"text and label columns)")
        names = [h.strip().lower() for h in header]
        for column in ("text", "label"):
            if column not in names:
                found = ", ".join(repr(h) for h in header) or "nothing"
                raise AttnkitError(f"{path}: the header has no {column!r} column (found "
                                   f"{found}; name the columns text and label)")
        i_text, i_label = names.index("text"), names.index("label")
        out = []
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) <= max(i_text, i_label):
                raise AttnkitError(f"{where}: the row has {len(row)} fields but the header has "
                                   f"{len(header)} (quote fields that contain commas)")
            out.append((row[i_text], _label(row[i_label], where)))
    return out


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    out = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise AttnkitError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                                   f"write one object per line, like "
                                   f'{{"text": "...", "label": "..."}}') from None
            if not isinstance(obj, dict):
                raise AttnkitError(f'{where}: expected an object like {{"text": "...", '
                                   f'"label": "..."}}, got {type(obj).__name__}')
            for key in ("text", "label"):
                if key not in obj:
                    raise AttnkitError(f"{where}: the object has no {key!r} key (found: "
                                       f"{', '.join(obj) or 'none'})")
            if not isinstance(obj["text"], str):
                raise AttnkitError(f"{where}: text must be a string, got {obj['text']!r}")
            out.append((obj["text"], _label(obj["label"], where)))
    return out


def label_names(labels: Iterable[str], where: str = "the data") -> list[str]:
    """The distinct labels in id order: numeric order when all are integers, else sorted."""
    names = sorted(set(labels))
    if all(_is_int(n) for n in names):
        names.sort(key=int)
    if len(names) < 2:
        raise AttnkitError(f"{where} has {'only the label ' + repr(names[0]) if names else 'no labels'}"
                           f" (classification needs at least two)")
    return names


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


# --- texts -> encoder inputs -------------------------------------------------------------------
def encode_text(tokenizer, text: str, max_len: int) -> list[int]:
    """Ids of ``text`` framed like BERT's inputs, ``[CLS] ... [SEP]`` (for the special tokens
    the tokenizer has), truncated to ``max_len`` with the final ``[SEP]`` kept.

    A Hugging Face ``tokenizer.json`` frames the text with its own post-processor;
    attnkit's tokenizers get the ``cls``/``sep`` ids of ``special_tokens`` around the text.
    """
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    if tokenizer.kind == "hf":
        ids = tokenizer.encode(text, add_special=True)
    else:
        ids = tokenizer.encode(text)
        cls = [specials["cls"]] if "cls" in specials else []
        ids = cls + ids + ([specials["sep"]] if "sep" in specials else [])
    if len(ids) > max_len:
        sep = specials.get("sep")
        ids = ids[: max_len - 1] + [sep] if sep is not None and ids[-1] == sep else ids[:max_len]
    return ids


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``seqs`` to the longest: ``input_ids`` (B, T) and ``attention_mask`` (B, T),
    1 for real tokens and 0 for padding."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def split_indices(n: int, val_fraction: float, where: str = "the data"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices of ``n`` examples: a fixed shuffle (seed 0, whatever
    train.seed is, so every run validates on the same examples), then the last
    ``val_fraction`` (at least one) validates."""
    if n < 2:
        raise AttnkitError(f"{where} has {n} example(s); a train and a validation split need "
                           f"at least 2")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return order[: n - n_val], order[n - n_val:]
