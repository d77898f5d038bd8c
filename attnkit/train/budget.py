"""What a training run will cost, estimated before anything is allocated.

An absurd size (``--train.batch_size=10000000``, ``--model.n_layers=1000000``) would otherwise
die inside the allocator with a traceback, or - ``--model.context_length=40000`` - fit in
memory and compute for many minutes before the first progress line. :func:`check_budget`
refuses both with the estimate, unless ``--force``.

Both estimates are lower bounds, so a run that is refused would not have fitted or been quick:

- **memory**: fp32 parameters, their gradients and AdamW's two moments (16 bytes a parameter,
  divided over the ranks under FSDP), plus the activations kept for the backward pass of one
  micro-batch: ``16 * d_model`` floats per token and layer for a Transformer block (its input,
  the two norms, q/k/v, the attention output, the feed-forward's hidden and activated
  ``4 * d_model``), ``8 * d_model`` for an LSTM layer (four gates and the cell), and the logits
  once. Compared with what the device has free now (``MemAvailable`` on a CPU,
  ``cudaMemGetInfo`` on a GPU).
- **time of one step**: ``6 * N * D`` for the ``N`` parameters outside the embeddings over the
  ``D`` tokens of a step (forward and backward, Kaplan et al. 2020), plus ``6 * L * T * d`` a
  token for causal attention, divided by the matrix-product rate measured on the device here
  and now. A step estimated above :data:`MAX_STEP_SECONDS` is refused.

The parameter count is exact: the model is built on PyTorch's ``meta`` device (shapes, no
storage) with at most two layers, and the per-layer count extrapolated.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from attnkit.config import RunConfig
from attnkit.errors import AttnkitError
from attnkit.models import build_model

MAX_STEP_SECONDS = 300.0  # one step longer than this leaves the user staring at nothing
GIB = 2**30
FIX = "lower the model size, --train.batch_size or --model.context_length, or raise --train.grad_accum"


@dataclass
class Budget:
    params: int  # exact, tied weights once
    embedding_params: int
    weights_bytes: int  # parameters, gradients and optimizer state, per process
    activation_bytes: int  # kept for backward, one micro-batch, per process
    flops_per_step: float  # per process

    @property
    def memory_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes


def _layer_fields(model_cfg) -> list[str]:
    return [f.name for f in dataclasses.fields(model_cfg) if f.name.startswith("n_") and
            f.name.endswith("layers")]


def count_params(model_cfg) -> tuple[int, int]:
    """(all parameters, embedding parameters) of the model ``model_cfg`` describes, without
    allocating it: built on the meta device with 1 and 2 of each layer stack, extrapolated."""
    def count(**layers: int) -> tuple[int, int]:
        with torch.device("meta"):
            model = build_model(dataclasses.replace(model_cfg, **layers))
        total = sum(p.numel() for p in model.parameters())
        embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
        return total, embed

    fields = _layer_fields(model_cfg)
    base = {f: min(getattr(model_cfg, f), 1) for f in fields}
    one, embed = count(**base)
    total = one
    for f in fields:
        n = getattr(model_cfg, f)
        if n > 1:
            per_layer = count(**{**base, f: 2})[0] - one
            total += per_layer * (n - 1)
    return total, embed


def estimate(cfg: RunConfig, world: int = 1) -> Budget:
    m, t = cfg.model, cfg.train
    params, embedding = count_params(m)
    shards = world if t.parallel == "fsdp" else 1
    weights = 16 * params // shards  # fp32 weights + gradients + AdamW's exp_avg, exp_avg_sq
    rows = max(1, t.batch_size // t.grad_accum // world)
    tokens = rows * m.context_length  # of one micro-batch
    layers = sum(getattr(m, f) for f in _layer_fields(m))
    per_layer = 8 if m.family == "lstm" else 16
    activations = 4 * tokens * (layers * per_layer * m.d_model + m.vocab_size)
    step_tokens = tokens * t.grad_accum
    flops = 6.0 * (params - embedding) * step_tokens
    if m.family != "lstm":
        flops += 6.0 * layers * m.context_length * m.d_model * step_tokens
    return Budget(params, embedding, weights, activations, flops)


def free_memory(device: torch.device) -> int | None:
    """Bytes the device can still give this process, or None where that is unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None  # mps shares memory with the system and says nothing useful in advance


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The best of a few square products on ``device``, in FLOP/s (an upper bound on what a
    training step achieves, which keeps the step-time estimate a lower bound)."""
    n = 4096 if device.type == "cuda" else 1024
    # constants, not random numbers: the run's random streams must not move (its initial
    # weights come after this), and a product's speed does not depend on the values
    a = torch.full((n, n), 0.5, device=device, dtype=dtype)
    b = torch.full((n, n), 0.25, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(4):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _where(device: torch.device) -> str:
    return "this machine" if device.type == "cpu" else str(device)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:.0f} MiB"


def _flop(n: float) -> str:
    for scale, unit in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP")):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n / 1e6:,.1f} MFLOP"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.0f} hours"


def check_budget(cfg: RunConfig, device: torch.device, world: int = 1,
                 dtype: torch.dtype = torch.float32) -> Budget:
    """Refuse a run that cannot fit the device's free memory, or whose single step would take
    longer than :data:`MAX_STEP_SECONDS` at the device's measured matrix-product rate."""
    with torch.random.fork_rng(devices=[]):  # building on the meta device may draw numbers
        b = estimate(cfg, world)
    free = free_memory(device)
    if free is not None and b.memory_bytes > free:
        raise AttnkitError(
            f"this run needs at least {_gib(b.memory_bytes)} of memory ({b.params:,} parameters: "
            f"{_gib(b.weights_bytes)} with their gradients and optimizer state, plus "
            f"{_gib(b.activation_bytes)} of activations per micro-batch) but {_where(device)} "
            f"has {_gib(free)} free ({FIX}; or pass --force to try anyway)")
    rate = matmul_rate(device, dtype)
    seconds = b.flops_per_step / rate
    if seconds > MAX_STEP_SECONDS:
        raise AttnkitError(
            f"one training step would take at least {_duration(seconds)} here "
            f"({_flop(b.flops_per_step)} at the {_flop(rate)}/s measured on {_where(device)}) "
            f"({FIX}; or "
            f"pass --force to run anyway)")
    return b
