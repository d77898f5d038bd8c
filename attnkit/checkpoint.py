"""Run directories and checkpoints.

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
into place only when complete, then ``latest`` is replaced atomically; a
crash mid-write therefore never leaves a half checkpoint behind ``latest``.
Weights are safetensors; the optimizer state is read back with
``torch.load(weights_only=True)``, which refuses to execute pickled code.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import sys
import warnings
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from attnkit.errors import AttnkitError
from attnkit.nn.linear import cpu_has_native_bf16

KEEP = 3  # complete checkpoints kept per run, unless train.keep_checkpoints says otherwise


def _fsync_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # never leave a half-written temporary file behind
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    _fsync_write(path, json.dumps(obj, indent=2) + "\n")


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
        error = _write_error(ckpt_root, e)  # while the disk is still as full as the write found it
        shutil.rmtree(tmp, ignore_errors=True)
        raise error from None
    return publish_checkpoint(run_dir, tmp, name, keep)


#: What a failed write raises: the OS's own error, and on a full disk torch.save's
#: ``RuntimeError`` ("file write failed") and safetensors' ``SafetensorError``.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


def _write_error(ckpt_root: Path, e: Exception) -> AttnkitError:
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
        _fsync_write(ckpt_root / "latest", name + "\n")
    except WRITE_ERRORS as e:
        error = _write_error(ckpt_root, e)
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


def resolve_device(name: str = "auto", option: str = "--train.device") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist. ``option`` is
    the command-line flag that set ``name``, for the error message."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AttnkitError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AttnkitError(f"device '{name}' was asked for but CUDA is not available "
                           f"(use {option}=cpu or auto)")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise AttnkitError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA "
                           f"devices visible)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise AttnkitError(f"device '{name}' was asked for but MPS is not available "
                           f"(use {option}=cpu or auto)")
    return device


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, option: str = "--dtype") -> torch.dtype:
    """``fp32``, ``bf16`` or ``fp16`` (``float32``/``bfloat16``/``float16`` also work)."""
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise AttnkitError(f"unknown dtype '{name}' for {option} (use fp32, bf16 or fp16)")
    return DTYPES[key]


def warn_slow_dtype(model: nn.Module) -> None:
    """Print a one-line note on stderr when ``model`` holds half-precision weights on a CPU
    that would be slower with them than with fp32: fp16 on any CPU (its matrix products are
    emulated), bf16 on a CPU without native bf16."""
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype == torch.float32:
        return
    if p.dtype == torch.float16 or not cpu_has_native_bf16():
        name = "fp16" if p.dtype == torch.float16 else "bf16"
        print(f"note: this CPU has no native {name} matrix products, so --dtype {name} is "
              f"slower than fp32 here (use --dtype fp32)", file=sys.stderr)


def load(run_dir: str | Path, device: str = "auto", dtype: str = "fp32") -> nn.Module:
    """Load a trained run for inference: the model in eval mode, on ``device``, with its
    tokenizer attached as ``model.tokenizer`` and the run's resolved config as
    ``model.run_config``. A Hugging Face GPT-2/Llama folder (``config.json`` with a
    ``model_type``, no ``checkpoints/``) is converted with :func:`attnkit.interop.from_hf`.

    ``dtype`` (``fp32``, ``bf16`` or ``fp16``) is the precision the weights are kept in for
    inference. Checkpoints are fp32; ``bf16`` halves the bytes read per decoded token, which
    is what bounds batch-1 decoding, so it roughly doubles decode speed on GPUs and on CPUs
    with native bf16 (AVX512-BF16, AMX). Logits are turned back to fp32 before sampling."""
    from attnkit.config import config_from_dict
    from attnkit.interop import from_hf, is_hf_dir
    from attnkit.interop.bart import read_token_ids
    from attnkit.models import build_model
    from attnkit.tokenizers import load_tokenizer

    run_dir = Path(run_dir)
    dtype = resolve_dtype(dtype)
    if is_hf_dir(run_dir):  # a Hugging Face folder: convert on the fly
        return from_hf(run_dir).to(resolve_device(device, "--device"), dtype).eval()
    ckpt = latest_checkpoint(run_dir)
    saved = read_run_config(run_dir)
    cfg = config_from_dict(saved)
    check_config_matches(run_dir, ckpt, saved)
    token_ids = read_token_ids(run_dir)  # a converted BART run: the ids of its config.json
    ids_only = token_ids is not None and not (run_dir / "tokenizer.json").exists()
    tokenizer = None if ids_only else load_tokenizer(run_dir / "tokenizer.json")
    check_tokenizer_matches(run_dir, ckpt)
    if tokenizer is not None and tokenizer.vocab_size > cfg.model.vocab_size:  # padding is fine
        raise AttnkitError(f"{run_dir}/tokenizer.json has {tokenizer.vocab_size} tokens but the "
                           f"model expects {cfg.model.vocab_size} (tokenizer from another run?)")
    model = build_model(cfg.model)
    load_weights(model, ckpt / "model.safetensors")
    model.to(resolve_device(device, "--device"), dtype).eval()
    model.tokenizer = tokenizer
    model.run_config = cfg
    if token_ids is not None:
        model.token_ids = token_ids
    labels = run_dir / "labels.json"  # a classification run's label names, in id order
    model.labels = json.loads(labels.read_text(encoding="utf-8")) if labels.is_file() else None
    return model
