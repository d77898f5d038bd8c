"""Run directories: their layout, files written atomically, and the checks that a run's
files agree with each other.

Layout of a run::

    runs/NAME/
      config.json          the resolved config (model, train, data)
      tokenizer.json       the tokenizer
      metrics.jsonl        one JSON object per logged step
      checkpoints/
        step-000500/       model.safetensors, optimizer.pt, state.json, and copies of
                           config.json and tokenizer.json
        latest             the name of the newest complete checkpoint

A checkpoint is written into a temporary folder beside the others and renamed
into place only when complete (:func:`publish_checkpoint`), then ``latest`` is
replaced atomically; a crash mid-write therefore never leaves a half checkpoint
behind ``latest``. What goes into a checkpoint (weights, optimizer state) is
:mod:`attnkit.weights`' business; this module knows only files and folders.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from attnkit.errors import AttnkitError

KEEP = 3  # complete checkpoints kept per run, unless train.keep_checkpoints says otherwise

#: What a failed write raises: the OS's own error, and on a full disk torch.save's
#: ``RuntimeError`` ("file write failed") and safetensors' ``SafetensorError``.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def write_text(path: Path, data: str) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsync, rename.
    A failed write leaves neither a half file nor the temporary one behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_error(ckpt_root: Path, e: Exception) -> AttnkitError:
    """The one-line error for a failed checkpoint write (one of :data:`WRITE_ERRORS`), with
    the reason: the OS's, or a full disk when torch or safetensors do not say why. Call it
    while the disk is still as full as the write found it."""
    reason = getattr(e, "strerror", None)
    if not reason:  # torch and safetensors do not say why; the free space usually does
        try:
            full = shutil.disk_usage(ckpt_root if ckpt_root.exists() else ckpt_root.parent).free < 2**20
        except OSError:
            full = False
        reason = os.strerror(errno.ENOSPC) if full else str(e).strip().splitlines()[-1][:200]
    return AttnkitError(f"could not write checkpoint in {ckpt_root}: {reason} "
                        f"(free disk space or choose another --out)")


def publish_checkpoint(run_dir: Path, tmp: Path, name: str, keep: int = KEEP) -> Path:
    """Turn the folder ``tmp``, holding a checkpoint's own files, into ``checkpoints/name``:
    add copies of the run's config/tokenizer/labels, fsync every file, rename the folder into
    place, point ``latest`` at it and prune old checkpoints. A checkpoint of the same step is
    set aside, not deleted, until the new one is in place, so a failure loses nothing."""
    ckpt_root = Path(run_dir) / "checkpoints"
    aside = ckpt_root / f".old-{name}"
    final = ckpt_root / name
    try:
        for name_ in ("config.json", "tokenizer.json", "labels.json"):  # each stands on its own
            if (run_dir / name_).is_file():
                shutil.copyfile(run_dir / name_, tmp / name_)
        for f in tmp.rglob("*"):  # make the bytes durable before the rename publishes them
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():  # set aside, not deleted: a failure below puts it back
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        write_text(ckpt_root / "latest", name + "\n")
    except WRITE_ERRORS as e:
        error = write_error(ckpt_root, e)
        shutil.rmtree(tmp, ignore_errors=True)
        if aside.exists() and final.exists():  # replaced; only ``latest`` failed
            shutil.rmtree(aside, ignore_errors=True)
        elif aside.exists():  # put the set-aside checkpoint back
            os.replace(aside, final)
        raise error from None
    shutil.rmtree(aside, ignore_errors=True)
    prune_checkpoints(ckpt_root, keep)
    return final


def prune_checkpoints(ckpt_root: Path, keep: int = KEEP) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (``latest`` is the newest)."""
    for old in sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint folder of ``run_dir``, or a clear error."""
    run_dir = check_run_dir(run_dir)
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        raise AttnkitError(f"{run_dir} holds no checkpoint (train with `attnkit train --out "
                           f"{run_dir}`, or point at a run directory that finished a checkpoint)")
    name = pointer.read_bytes()[:200].decode("utf-8", "replace").strip()
    ckpt = run_dir / "checkpoints" / name
    # ``latest`` holds one folder name beside it; anything else (empty, a path, garbage) is damage
    if not name or name != Path(name).name or name.startswith(".") or \
            not (ckpt / "model.safetensors").is_file():
        found = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")
                       if (p / "model.safetensors").is_file())
        fix = (f"write the name of a complete checkpoint, e.g. {found[-1]}, into it" if found
               else "restore the run directory or train again")
        raise AttnkitError(f"{pointer} names {name!r}, which is not a complete checkpoint "
                           f"(the run directory is damaged; {fix})")
    return ckpt


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path, or a clear error when it is missing or not a folder."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AttnkitError(f"run directory not found: {run_dir} (train one with `attnkit train "
                           f"--out {run_dir}`)")
    if not run_dir.is_dir():
        raise AttnkitError(f"{run_dir} is a file, not a run directory (point at the folder "
                           f"`attnkit train --out` wrote)")
    return run_dir


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict (JSON only: nothing in it is executed)."""
    path = check_run_dir(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AttnkitError(f"{run_dir} has no config.json (not an attnkit run directory)") from None
    except json.JSONDecodeError as e:
        raise AttnkitError(f"{path} is not valid JSON (line {e.lineno}); the run directory "
                           f"is damaged") from None
    except (UnicodeDecodeError, OSError) as e:
        raise AttnkitError(f"cannot read {path}: {getattr(e, 'strerror', None) or getattr(e, 'reason', e)} "
                           f"(the run directory is damaged; restore config.json)") from None
    if not isinstance(data, dict):
        raise AttnkitError(f"{path} must hold a JSON object of sections (model, train, data), got "
                           f"{type(data).__name__}; the run directory is damaged")
    return data


def read_checkpoint_state(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json`` (``step``, ``elapsed_s``), validated."""
    path = Path(ckpt) / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AttnkitError(f"{ckpt} has no state.json, so it cannot be resumed (it can still be "
                           f"sampled)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise AttnkitError(f"{path} is not valid JSON, so the checkpoint cannot be resumed (the "
                           f"file is corrupt; restore it or resume from an earlier checkpoint)") from None
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise AttnkitError(f"{path} has no step count, so the checkpoint cannot be resumed (the "
                           f"file is corrupt; restore it or resume from an earlier checkpoint)")
    return state


def save_labels(run_dir: str | Path, names: Sequence[str]) -> None:
    """Write the label names, in id order, to ``run_dir/labels.json``."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(run_dir) / "labels.json", list(names))


def read_labels(run_dir: str | Path) -> list[str]:
    """The label names a classification run saved (id order)."""
    path = Path(run_dir) / "labels.json"
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AttnkitError(f"{run_dir} has no labels.json (it is not a classification run, or "
                           f"the file was removed)") from None
    except ValueError:
        raise AttnkitError(f"{path} is not valid JSON (the run directory is damaged)") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise AttnkitError(f"{path} must be a list of label names (the run directory is damaged)")
    return names


def check_tokenizer_matches(run_dir: Path, ckpt: Path) -> None:
    """Refuse a run whose ``tokenizer.json`` is not the one its checkpoint was trained with
    (the copy saved inside the checkpoint), e.g. one copied in from another run: ids would
    silently mean other text."""
    saved, current = Path(ckpt) / "tokenizer.json", Path(run_dir) / "tokenizer.json"
    if not saved.is_file() or not current.is_file():
        return  # older checkpoints and tokenizer-less imports carry no copy
    a, b = saved.read_bytes(), current.read_bytes()
    if a == b:
        return
    try:
        if json.loads(a) == json.loads(b):  # the same tokenizer, re-serialised
            return
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # damaged rather than foreign: the tokenizer loader says so
    raise AttnkitError(f"{current} is not the tokenizer {ckpt.name} was trained with (a "
                       f"tokenizer from another run?); copy {saved} over it")


def check_config_matches(run_dir: Path, ckpt: Path, ours: dict[str, Any] | None = None) -> None:
    """Refuse a run whose ``config.json`` differs from the copy saved inside its checkpoint.

    The checkpoint's copy is the config its weights were trained with. An edit of the run's
    ``config.json`` that keeps the shapes (``ffn=relu``, ``scale_embeddings=true``) would
    load without complaint and silently compute something else, so any difference is an
    error naming both files. Settings change through overrides (``--train.*`` on resume).
    ``ours``: the run's ``config.json`` as the caller already read it."""
    saved, current = Path(ckpt) / "config.json", Path(run_dir) / "config.json"
    if not saved.is_file():
        return  # older checkpoints carry no copy
    try:
        theirs = json.loads(saved.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        raise AttnkitError(f"{saved} is not valid JSON (the checkpoint is damaged; restore it or "
                           f"use an earlier checkpoint)") from None
    ours = read_run_config(run_dir) if ours is None else ours
    key = _first_difference(ours, theirs)
    if key is not None:
        here, there = (_lookup(d, key) for d in (ours, theirs))
        raise AttnkitError(f"{current} says {key}={here} but the checkpoint was trained with "
                           f"{key}={there} ({saved}); copy {saved} over {current} (settings "
                           f"change through overrides, not by editing config.json)")


_ABSENT = object()


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The first dotted key at which two parsed JSON values differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            key = f"{prefix}.{k}" if prefix else str(k)
            found = _first_difference(a.get(k, _ABSENT), b.get(k, _ABSENT), key)
            if found is not None:
                return found
        return None
    return None if a == b and type(a) is type(b) else (prefix or "(the whole file)")


def _lookup(d: Any, key: str) -> str:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return "absent"
        d = d[part]
    return json.dumps(d)
