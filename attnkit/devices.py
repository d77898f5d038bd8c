"""Devices and precisions by name: ``--device`` and ``--dtype`` resolved, with one-line
errors, and what the CPU can do natively."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from attnkit.errors import AttnkitError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def resolve_dtype(name: str, option: str = "--dtype") -> torch.dtype:
    """``fp32``, ``bf16`` or ``fp16`` (``float32``/``bfloat16``/``float16`` also work)."""
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise AttnkitError(f"unknown dtype '{name}' for {option} (use fp32, bf16 or fp16)")
    return DTYPES[key]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), read from
    /proc/cpuinfo; False where that file does not exist. Without it PyTorch emulates bf16 and
    a bf16 model is far slower than fp32 on the CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
