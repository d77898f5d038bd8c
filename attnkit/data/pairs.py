"""Parallel text for sequence-to-sequence tasks: (source, target) pairs in three splits.

``data.path`` may be

- a TSV file, one ``source<TAB>target`` pair per line;
- a JSONL file (``.jsonl``/``.ndjson``), one ``{"source": ..., "target": ...}`` per line;
- a folder holding ``train.tsv`` (or ``train.jsonl``) and optionally ``valid``
  (or ``val``/``dev``) and ``test`` files in either format;
- ``synthetic:reverse``, ``synthetic:sort`` or ``synthetic:add`` (see
  :mod:`attnkit.data.synthetic`).

A single file is split by a seeded shuffle that depends only on the data:
``val_fraction / 2`` validation, as much test, the rest training (90/5/5 by
default). A folder's missing ``valid``/``test`` files are carved out of its
``train`` file the same way. Blank lines are skipped; any other malformed line
is an :class:`AttnkitError` naming ``file:line``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from attnkit.data.synthetic import SYNTHETIC, synthetic_splits
from attnkit.errors import AttnkitError

Pair = tuple[str, str]
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"val": "valid", "dev": "valid", "validation": "valid"}
SPLIT_SEED = 2017  # the split depends on the data alone, never on train.seed
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl"}  # anything else is read as TSV
SPECIALS = ("pad", "bos", "eos")  # the special tokens a seq2seq vocabulary needs


def split_name(name: str) -> str:
    """``train`` | ``valid`` | ``test`` for a split name or alias (``val``, ``dev``)."""
    key = SPLIT_ALIASES.get(name, name)
    if key not in SPLITS:
        raise AttnkitError(f"unknown split '{name}' (choose train, valid or test)")
    return key


@dataclass
class ParallelData:
    """Pairs in three splits, and where they came from (for messages)."""

    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]
    origin: str

    def split(self, name: str) -> list[Pair]:
        """The pairs of split ``train`` | ``valid`` (alias ``val``, ``dev``) | ``test``."""
        return getattr(self, split_name(name))

    def text(self, sep: str = "\n") -> str:
        """Every source and target joined by ``sep``, for training a tokenizer on the data
        (a char vocabulary wants ``sep=""``, so it holds the data's characters alone)."""
        return sep.join(x for split in SPLITS for pair in getattr(self, split) for x in pair)

    def describe(self) -> str:
        return " / ".join(f"{len(getattr(self, s)):,} {s}" for s in SPLITS) + " pairs"


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs in one TSV or JSONL file; a malformed line raises naming ``file:line``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AttnkitError(f"parallel data file not found: {path}") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise AttnkitError(f"{path}:{line}: not valid UTF-8 (save the file as UTF-8)") from None
    except OSError as e:
        raise AttnkitError(f"cannot read {path}: {e.strerror or e} (check the path)") from None
    parse = _jsonl_line if FORMATS.get(path.suffix.lower()) == "jsonl" else _tsv_line
    pairs = []
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            pairs.append(parse(line, f"{path}:{n}"))
    if not pairs:
        raise AttnkitError(f"{path} holds no pairs (write one source<TAB>target per line, or "
                           f'JSONL lines {{"source": ..., "target": ...}})')
    return pairs


def _tsv_line(line: str, where: str) -> Pair:
    tabs = line.count("\t")
    if tabs != 1:
        what = "no tab" if tabs == 0 else f"{tabs} tabs"
        raise AttnkitError(f"{where}: {what} (each line must be source<TAB>target, with exactly "
                           f"one tab)")
    source, target = line.split("\t")
    return _check_pair(source, target, where)


def _jsonl_line(line: str, where: str) -> Pair:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise AttnkitError(f'{where}: not valid JSON ({e.msg}) (each line must be '
                           f'{{"source": "...", "target": "..."}})') from None
    if not (isinstance(obj, dict) and isinstance(obj.get("source"), str)
            and isinstance(obj.get("target"), str)):
        raise AttnkitError(f'{where}: expected an object with string "source" and "target" '
                           f'(e.g. {{"source": "abc", "target": "cba"}})')
    return _check_pair(obj["source"], obj["target"], where)


def _check_pair(source: str, target: str, where: str) -> Pair:
    for side, value in (("source", source), ("target", target)):
        if not value.strip():
            raise AttnkitError(f"{where}: empty {side} (every pair needs text on both sides)")
    return source, target


def split_pairs(pairs: list[Pair], fraction: float, parts: int = 2, origin: str = "the data"
                ) -> list[list[Pair]]:
    """Shuffle ``pairs`` with a fixed seed and cut off ``parts`` held-out splits of
    ``fraction / 2`` each (at least one pair each); returns [rest, held-out...]."""
    n_held = max(1, round(len(pairs) * fraction / 2))
    if len(pairs) < parts * n_held + 1:
        raise AttnkitError(f"{origin} has {len(pairs)} pairs, too few to split off validation "
                           f"and test pairs (give at least {parts * n_held + 1}, or separate "
                           f"train/valid/test files in a folder)")
    order = list(range(len(pairs)))
    random.Random(SPLIT_SEED).shuffle(order)
    shuffled = [pairs[i] for i in order]
    held = [shuffled[i * n_held:(i + 1) * n_held] for i in range(parts)]
    return [shuffled[parts * n_held:], *held]


def load_parallel(spec: str, val_fraction: float = 0.1) -> ParallelData:
    """The pairs named by ``data.path`` (see the module docstring), split in three."""
    if spec.startswith("synthetic:"):
        name = spec.split(":", 1)[1]
        if name not in SYNTHETIC:
            raise AttnkitError(f"unknown synthetic task '{name}' (choose "
                               f"{', '.join('synthetic:' + n for n in SYNTHETIC)})")
        return ParallelData(*synthetic_splits(name), origin=spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path, val_fraction)
    if not path.is_file():
        raise AttnkitError(f"parallel data not found: {spec} (pass a .tsv or .jsonl file of "
                           f"pairs, a folder with train.tsv, or synthetic:"
                           f"{'|'.join(SYNTHETIC)})")
    train, valid, test = split_pairs(read_pairs(path), val_fraction, origin=str(path))
    return ParallelData(train, valid, test, origin=str(path))


def _load_folder(folder: Path, val_fraction: float) -> ParallelData:
    names = {"train": ("train",), "valid": ("valid", "val", "dev"), "test": ("test",)}
    found: dict[str, Path] = {}
    for split, stems in names.items():
        for stem in stems:
            for ext in (".tsv", ".jsonl"):
                if split not in found and (folder / f"{stem}{ext}").is_file():
                    found[split] = folder / f"{stem}{ext}"
    if "train" not in found:
        raise AttnkitError(f"{folder} has no train.tsv or train.jsonl (a folder of parallel "
                           f"data holds train, and optionally valid and test, files)")
    splits = {split: read_pairs(p) for split, p in found.items()}
    missing = [s for s in ("valid", "test") if s not in splits]
    if missing:
        rest, *held = split_pairs(splits["train"], val_fraction, len(missing), str(found["train"]))
        splits["train"] = rest
        splits.update(zip(missing, held))
    return ParallelData(splits["train"], splits["valid"], splits["test"], origin=str(folder))


# --- tokens ---------------------------------------------------------------------------------

def special_ids(tokenizer) -> tuple[int, int, int]:
    """(pad, bos, eos) ids of ``tokenizer``, or an error saying the run cannot do seq2seq."""
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    lacking = [name for name in SPECIALS if name not in specials]
    if lacking:
        raise AttnkitError(f"the tokenizer has no {', '.join(lacking)} token (a seq2seq model "
                           f"needs pad, bos and eos; train with --data.task=seq2seq)")
    return specials["pad"], specials["bos"], specials["eos"]


def pad_batch(seqs: list[list[int]], value: int, device: torch.device | str = "cpu"
              ) -> torch.Tensor:
    """Right-pad id lists to one (B, T_max) long tensor."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device)


def source_batch(sources: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``src_ids`` (B, S) right-padded with ``pad_id``, and ``src_mask`` (B, S), True for
    real tokens. Each source already ends in EOS."""
    ids = pad_batch(sources, pad_id, device)
    lengths = torch.tensor([len(s) for s in sources], device=device)
    mask = torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]  # (B, S)
    return ids, mask
