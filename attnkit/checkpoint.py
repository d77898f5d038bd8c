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

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from attnkit.errors import AttnkitError

KEEP = 3  # complete checkpoints kept per run


def _fsync_write(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
                    state: dict[str, Any], extra_tensors: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step-{state['step']}`` completely, then point ``latest`` at it."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state['step']:06d}"
    tmp = ckpt_root / f".tmp-{name}"
    final = ckpt_root / name
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(model_state(model), str(tmp / "model.safetensors"))
        if optimizer is not None:
            torch.save({"optimizer": optimizer.state_dict(), **(extra_tensors or {})},
                       tmp / "optimizer.pt")
        write_json(tmp / "state.json", state)
        for name_ in ("config.json", "tokenizer.json", "labels.json"):  # each stands on its own
            if (run_dir / name_).is_file():
                shutil.copyfile(run_dir / name_, tmp / name_)
        for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_write(ckpt_root / "latest", name + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise AttnkitError(f"could not write checkpoint in {ckpt_root}: {e.strerror or e} "
                           f"(free disk space or choose another --out)") from None
    for old in sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint folder of ``run_dir``, or a clear error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AttnkitError(f"run directory not found: {run_dir} (train one with `attnkit train "
                           f"--out {run_dir}`)")
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        raise AttnkitError(f"{run_dir} holds no checkpoint (train with `attnkit train --out "
                           f"{run_dir}`, or point at a run directory that finished a checkpoint)")
    ckpt = run_dir / "checkpoints" / pointer.read_text().strip()
    if not (ckpt / "model.safetensors").is_file():
        raise AttnkitError(f"checkpoint {ckpt} named by {pointer} is missing (the run directory "
                           f"is damaged; restore it or train again)")
    return ckpt


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
    if missing or unexpected:
        raise AttnkitError(f"weights in {path} do not fit this architecture (missing "
                           f"{missing[:3]}, unexpected {unexpected[:3]}); the checkpoint and "
                           f"config.json disagree")
    for k, t in tensors.items():
        if t.shape != expected[k].shape:
            raise AttnkitError(f"weights in {path} do not fit this architecture: {k} has shape "
                               f"{tuple(t.shape)}, the model expects {tuple(expected[k].shape)}")
    model.load_state_dict(tensors, strict=False)


def _is_tied(model: nn.Module, key: str) -> bool:
    sd = model.state_dict()
    ptr = sd[key].data_ptr()
    return any(k != key and v.data_ptr() == ptr for k, v in sd.items())


def load_training_state(ckpt: Path) -> dict[str, Any]:
    """The optimizer state and RNG states saved beside the weights (no code is unpickled)."""
    try:
        return torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AttnkitError(f"{ckpt} has no optimizer.pt, so it cannot be resumed "
                           f"(it can still be sampled)") from None
    except Exception as e:  # noqa: BLE001 - an unpickling refusal or a truncated file
        raise AttnkitError(f"refusing to load {ckpt / 'optimizer.pt'}: "
                           f"{str(e).splitlines()[0][:160]} (the file is corrupt or not an "
                           f"attnkit checkpoint)") from None


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AttnkitError(f"{run_dir} has no config.json (not an attnkit run directory)") from None
    except json.JSONDecodeError as e:
        raise AttnkitError(f"{path} is not valid JSON (line {e.lineno}); the run directory "
                           f"is damaged") from None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist."""
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
                           f"(use --train.device=cpu or auto)")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise AttnkitError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA "
                           f"devices visible)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None)
                                     and torch.backends.mps.is_available()):
        raise AttnkitError(f"device '{name}' was asked for but MPS is not available "
                           f"(use --train.device=cpu or auto)")
    return device


def load(run_dir: str | Path, device: str = "auto") -> nn.Module:
    """Load a trained run for inference: the model in eval mode, on ``device``, with its
    tokenizer attached as ``model.tokenizer`` and the run's resolved config as
    ``model.run_config``. A Hugging Face GPT-2/Llama folder (``config.json`` with a
    ``model_type``, no ``checkpoints/``) is converted with :func:`attnkit.interop.from_hf`."""
    from attnkit.config import config_from_dict
    from attnkit.interop import from_hf, is_hf_dir
    from attnkit.models import build_model
    from attnkit.tokenizers import load_tokenizer

    run_dir = Path(run_dir)
    if is_hf_dir(run_dir):  # a Hugging Face folder: convert on the fly
        return from_hf(run_dir).to(resolve_device(device)).eval()
    ckpt = latest_checkpoint(run_dir)
    cfg = config_from_dict(read_run_config(run_dir))
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    if tokenizer.vocab_size > cfg.model.vocab_size:  # a padded embedding table is fine
        raise AttnkitError(f"{run_dir}/tokenizer.json has {tokenizer.vocab_size} tokens but the "
                           f"model expects {cfg.model.vocab_size} (tokenizer from another run?)")
    model = build_model(cfg.model)
    load_weights(model, ckpt / "model.safetensors")
    model.to(resolve_device(device)).eval()
    model.tokenizer = tokenizer
    model.run_config = cfg
    labels = run_dir / "labels.json"  # a classification run's label names, in id order
    model.labels = json.loads(labels.read_text(encoding="utf-8")) if labels.is_file() else None
    return model
