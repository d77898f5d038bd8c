"""What the side-by-side benchmarks share: the reference they compare with (the very same
weights as a Hugging Face ``transformers`` model, exported with ``attnkit.interop.to_hf`` and
loaded back), the allocator setting both sides run under, and where results go."""

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from attnkit.interop import to_hf
from attnkit.runtime import keep_freed_memory

# where every script writes its JSON; ATTNKIT_BENCH_RESULTS elsewhere (the smoke tests use it)
RESULTS = Path(os.environ.get("ATTNKIT_BENCH_RESULTS") or Path(__file__).parent / "results")


def hf_twin(model: nn.Module) -> nn.Module:
    """``model``'s weights in ``AutoModelForCausalLM`` (transformers' own classes), quietly."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        to_hf(model, Path(tmp) / "hf")
        return AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf")


def add_malloc_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep freed memory for reuse as the attnkit command does (default), "
                             "or glibc's defaults; either way for both sides")


def apply_malloc(choice: str) -> bool:
    """Set the process's allocator as ``--malloc`` asks, for both sides; True if freed memory
    is kept (:mod:`attnkit.runtime`)."""
    return choice == "keep" and keep_freed_memory()


def write_results(stem: str, device: torch.device, kept: bool, payload: dict,
                  tags: tuple[str, ...] = ()) -> Path:
    """Write ``payload`` (plus threads and torch version) as JSON to ``results/STEM[-DEVICE]
    [-TAG...][-default-malloc].json``: the device unless CPU, the tags and the allocator note on
    CPU only. Prints and returns the path."""
    name = stem + ("" if device.type == "cpu" else f"-{device.type}")
    if device.type == "cpu":
        name += "".join(f"-{t}" for t in tags) + ("" if kept else "-default-malloc")
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__,
                               **payload}, indent=2) + "\n")
    print(f"-> {out}")
    return out
