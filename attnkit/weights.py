"""Weights and training state in and out of a checkpoint folder.

Weights are safetensors (:func:`model_state`, :func:`load_weights`); the optimizer state
and every other pickle-format file is read back with ``torch.load(weights_only=True)``
(:func:`load_plain`), which refuses to execute pickled code. Where a checkpoint folder lives
and how it is published is :mod:`attnkit.runs`.
"""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from attnkit.errors import AttnkitError
from attnkit.runs import (
    KEEP,
    WRITE_ERRORS,
    publish_checkpoint,
    read_checkpoint_state,
    write_error,
    write_json,
)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor stored once (tied embeddings), contiguous."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().contiguous().cpu()
    return out


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict[str, Any], extra_tensors: dict[str, Any] | None = None,
                    keep: int = KEEP) -> Path:
    """Write checkpoint ``step-{state['step']}`` completely, then point ``latest`` at it."""
    ckpt_root = run_dir / "checkpoints"
    name = f"step-{state['step']:06d}"
    tmp = ckpt_root / f".tmp-{name}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(model_state(model), str(tmp / "model.safetensors"))
        if optimizer is not None:
            torch.save({"optimizer": optimizer.state_dict(), **(extra_tensors or {})},
                       tmp / "optimizer.pt")
        write_json(tmp / "state.json", state)
    except WRITE_ERRORS as e:
        error = write_error(ckpt_root, e)  # while the disk is still as full as the write found it
        shutil.rmtree(tmp, ignore_errors=True)
        raise error from None
    return publish_checkpoint(run_dir, tmp, name, keep)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model``; tied tensors may be stored once."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AttnkitError(f"cannot read weights {path}: {e} (the file is truncated or corrupt; "
                           f"use an earlier checkpoint)") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors and not _is_tied(model, k)]
    unexpected = [k for k in tensors if k not in expected]
    saved = Path(path).parent / "config.json"  # the config the weights were saved with
    fix = (f"config.json does not describe these weights; copy {saved} over it" if saved.is_file()
           else "the checkpoint and config.json disagree")
    if missing or unexpected:
        raise AttnkitError(f"weights in {path} do not fit this architecture (missing "
                           f"{missing[:3]}, unexpected {unexpected[:3]}); {fix}")
    for k, t in tensors.items():
        if t.shape != expected[k].shape:
            if k.startswith("pos_emb") and t.shape[1:] == expected[k].shape[1:]:
                fix = (f"the learned position table holds {t.shape[0]} positions but the config "
                       f"asks for context_length {expected[k].shape[0]}; {fix}")
            raise AttnkitError(f"weights in {path} do not fit this architecture: {k} has shape "
                               f"{tuple(t.shape)}, the model expects {tuple(expected[k].shape)} "
                               f"({fix})")
    model.load_state_dict(tensors, strict=False)


def _is_tied(model: nn.Module, key: str) -> bool:
    sd = model.state_dict()
    ptr = sd[key].data_ptr()
    return any(k != key and v.data_ptr() == ptr for k, v in sd.items())


def refused(path: Path | str, what: str) -> AttnkitError:
    """A pickle that holds more than ``what``: loading it could run code."""
    return AttnkitError(f"refusing to load {path}: it holds pickled objects other than {what} "
                        f"(loading it could run code; it is not an attnkit checkpoint, so restore "
                        f"the file or resume from another run)")


def corrupt(path: Path | str) -> AttnkitError:
    """A pickle-format file that cannot be read at all (truncated, or not a pickle)."""
    return AttnkitError(f"cannot read {path}: the file is truncated or corrupt (restore it or "
                        f"resume from an earlier checkpoint)")


def load_plain(data: IO[bytes], path: Path | str) -> Any:
    """``torch.load(weights_only=True)`` of ``data``: tensors and plain data, else a refusal
    naming ``path``; never torch's own message, which suggests ``weights_only=False``. Every
    pickle-format file attnkit reads (``optimizer.pt``, ``training.pt``, values inside a
    sharded checkpoint) goes through here."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles on stderr
            warnings.simplefilter("ignore")
            return torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only=True refused an object that is not tensors or plain data
        raise refused(path, "tensors") from None
    except Exception:  # noqa: BLE001 - a truncated or otherwise unreadable file
        raise corrupt(path) from None


def load_training_state(ckpt: Path) -> dict[str, Any]:
    """The optimizer state and RNG states saved beside the weights (no code is unpickled).

    ``state.json`` is checked first, so a checkpoint that cannot be resumed is refused before
    anything is restored."""
    read_checkpoint_state(ckpt)
    path = ckpt / "optimizer.pt"
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, once read
    except FileNotFoundError:
        raise AttnkitError(f"{ckpt} has no optimizer.pt, so it cannot be resumed "
                           f"(it can still be sampled)") from None
    except OSError:  # a folder in its place, unreadable: as damaged as a truncated file
        raise corrupt(path) from None
    with f:
        state = load_plain(f, path)
    if not isinstance(state, dict) or "optimizer" not in state:
        raise AttnkitError(f"{path} holds no optimizer state (it is not an attnkit checkpoint; "
                           f"restore the file)")
    return state
