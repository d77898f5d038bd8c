"""Data parallelism on PyTorch's own engine: torchrun, DDP, FSDP2 and distributed checkpoints.

Model code stays single-device. :func:`setup` reads the variables torchrun sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and
starts the process group (NCCL on CUDA, gloo on CPU); :func:`parallelize`
then wraps the built model once - activation checkpointing per block, then DDP,
or FSDP2's ``fully_shard`` on every block and on the root.

Checkpoints keep the layout of :mod:`attnkit.runs`. A DDP run writes the
usual single-file checkpoint from rank 0. An FSDP run writes::

    checkpoints/step-000500/
      sharded/             torch.distributed.checkpoint (DCP): model + optimizer, by parameter
                           name, so any world size can read it back
      model.safetensors    the full weights gathered on rank 0, for `attnkit sample` and load()
      training.pt          RNG states of every rank
      state.json, config.json, tokenizer.json

Every rank writes its shards into ``.tmp-step-000500``; after a barrier rank 0
renames the folder into place and only then moves ``latest``, so ``latest``
always names a complete checkpoint. ``sharded/`` is read back through
:mod:`attnkit.train.dcp_safe`, so that nothing in it can run code.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from attnkit.config import TrainConfig
from attnkit.errors import AttnkitError
from attnkit.runs import KEEP, publish_checkpoint, write_json
from attnkit.weights import corrupt, load_plain, load_weights, refused

RENDEZVOUS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
SHARDED = "sharded"  # the DCP folder inside an FSDP checkpoint


@dataclass
class DistEnv:
    """Where this process stands: its rank, the world size and how the model is wrapped."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    mode: str = "none"  # none | ddp | fsdp
    notes: list[str] = field(default_factory=list)  # said once by rank 0 when training starts

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global (micro-)batch of ``batch_size`` sequences."""
        n = batch_size // self.world
        return slice(self.rank * n, (self.rank + 1) * n)


# --- process group ----------------------------------------------------------------------------

def read_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; (0, 1, 0) outside torchrun."""
    present = [k for k in RENDEZVOUS if k in os.environ]
    if not present:
        return 0, 1, 0
    missing = [k for k in RENDEZVOUS if k not in os.environ]
    if missing:
        raise AttnkitError(f"{present[0]} is set but {', '.join(missing)} "
                           f"{'is' if len(missing) == 1 else 'are'} missing: run under torchrun "
                           f"(e.g. `torchrun --nproc_per_node=2 -m attnkit train ...`), which sets "
                           f"{', '.join(RENDEZVOUS)}")
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise AttnkitError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (run under "
                           "torchrun, which sets them)") from None
    if not 0 <= rank < world:
        raise AttnkitError(f"RANK={rank} is outside WORLD_SIZE={world} (run under torchrun)")
    return rank, world, local


def check_batch(t: TrainConfig, world: int) -> None:
    """Every rank must get the same whole number of sequences per micro-batch."""
    micro = t.batch_size // t.grad_accum
    if micro % world == 0:
        return
    fits = [b for b in range(t.batch_size, t.batch_size + world * t.grad_accum + 1)
            if b % (world * t.grad_accum) == 0]
    raise AttnkitError(
        f"train.batch_size / train.grad_accum = {t.batch_size}/{t.grad_accum} = {micro} sequences "
        f"per micro-batch cannot be split over {world} processes (use a train.batch_size that is "
        f"a multiple of {world * t.grad_accum}, e.g. --train.batch_size={fits[0]}, or another "
        f"--nproc_per_node)")


def setup(t: TrainConfig, device: torch.device) -> tuple[DistEnv, torch.device]:
    """Check the launch, start the process group if one is needed, and return this rank's
    place and device (``cuda:LOCAL_RANK`` on GPUs). Call before building the model.

    One process: ``parallel=ddp`` trains on one device (with a note); ``parallel=fsdp`` starts
    a private one-process group so the run writes sharded checkpoints like a larger one."""
    rank, world, local = read_env()
    env = DistEnv(rank=rank, world=world, local_rank=local)
    mode = t.parallel if t.parallel != "auto" else ("ddp" if world > 1 else "none")
    try:
        if mode == "none" and world > 1:
            raise AttnkitError(f"--parallel none under torchrun with {world} processes would "
                               f"train {world} separate copies (use --parallel ddp or fsdp)")
        check_batch(t, world)
        if mode == "fsdp" and t.precision == "fp16":
            raise AttnkitError("--parallel fsdp trains in fp32 or bf16 (use --train.precision="
                               "bf16; fp16 needs a gradient scaler FSDP does not share)")
    except AttnkitError:
        if rank > 0:  # every rank finds the same fault; rank 0 says it once
            raise SystemExit(2) from None
        raise
    if mode == "ddp" and world == 1:
        env.notes.append("parallel: one process, so ddp is not needed; training on one device "
                         "(launch with torchrun --nproc_per_node=N for data parallelism)")
        mode = "none"
    env.mode = mode
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local)
    if mode == "none" or dist.is_initialized():
        return env, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
    if world == 1 and "MASTER_ADDR" not in os.environ:  # fsdp in one plain process
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=timedelta(minutes=30))
    return env, device


def teardown() -> None:
    """End the process group, if one was started (harmless otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over the ranks, as floats (one collective)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --- wrapping -------------------------------------------------------------------------------

def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated layers: the items of every ``nn.ModuleList`` directly under the model
    (``blocks`` of the decoder and encoder, ``encoder`` and ``decoder`` of the seq2seq)."""
    return [block for child in model.children() if isinstance(child, nn.ModuleList)
            for block in child]


def checkpoint_blocks(model: nn.Module) -> None:
    """Activation checkpointing: each block keeps only its input in training and recomputes
    the rest in backward (Chen et al., 2016). Works on one device and under DDP/FSDP; the
    module names, and so the checkpoints, do not change."""
    from torch.utils.checkpoint import checkpoint

    blocks = blocks_of(model)
    if not blocks:
        raise AttnkitError(f"--train.activation_checkpointing needs a model made of blocks; "
                           f"{type(model).__name__} has none (leave it false)")
    for block in blocks:
        plain = block.forward

        def forward(*args, _plain=plain, _block=block, **kwargs):
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_plain, *args, use_reentrant=False, **kwargs)
            return _plain(*args, **kwargs)  # eval, sampling with a KV cache

        block.forward = forward


def parallelize(model: nn.Module, t: TrainConfig, env: DistEnv, device: torch.device,
                precision: str) -> nn.Module:
    """Wrap a built single-device ``model`` for training; returns the module to call.

    ``fsdp`` shards in place (``model`` itself becomes the FSDP root and is returned);
    ``ddp`` returns a ``DistributedDataParallel`` around ``model``."""
    if t.activation_checkpointing:
        checkpoint_blocks(model)
    if env.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if env.mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        blocks = blocks_of(model)
        if not blocks:
            raise AttnkitError(f"--parallel fsdp shards a model block by block, and "
                               f"{type(model).__name__} has no blocks (use --parallel ddp)")
        policy = MixedPrecisionPolicy()
        if device.type == "cuda" and precision == "bf16":
            # Matmuls and all-gathers in bf16; gradients are reduced and kept in fp32.
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        # The trainer never edits a model's output in place, the case this warning is about.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")
        for block in blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)  # the embeddings, the head and the final norm
    return model


def no_sync(wrapped: nn.Module, env: DistEnv, last: bool):
    """A context for one micro-step: gradients are reduced across ranks only on the ``last``."""
    if env.mode == "ddp" and not last:
        return wrapped.no_sync()
    if env.mode == "fsdp":
        wrapped.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


# --- sharded checkpoints --------------------------------------------------------------------

def is_sharded(ckpt: Path) -> bool:
    return (Path(ckpt) / SHARDED).is_dir()


def _fqn_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         plain: dict[str, Any]) -> dict[str, Any]:
    """A plain ``optimizer.state_dict()`` (parameters numbered in group order) keyed by
    parameter name instead, the form ``set_optimizer_state_dict`` reads."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    state = {order[i]: s for i, s in plain["state"].items()}
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in plain["param_groups"]]
    return {"state": state, "param_groups": groups}


def load_into(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
              plain_optimizer: dict[str, Any] | None) -> None:
    """Load weights and optimizer state from ``ckpt`` into ``model`` whatever its wrapping
    (none, DDP's inner module, FSDP) and whatever world size wrote the checkpoint.

    A sharded checkpoint is read with DCP, which reshards on load. A single-file one is
    read directly, or - into an FSDP model - as a full state dict that every rank slices."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    if is_sharded(ckpt):
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        _load_sharded(ckpt / SHARDED, state)
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        return
    if plain_optimizer is None:
        raise AttnkitError(f"{ckpt} has no optimizer state, so it cannot be resumed")
    if not _is_fsdp(model):
        load_weights(model, ckpt / "model.safetensors")
        optimizer.load_state_dict(plain_optimizer)
        return
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "model.safetensors"))
    for name, aliases in _tied(model).items():  # stored once; every name must be given
        weights.update({a: weights[name] for a in aliases if name in weights})
    set_state_dict(model, optimizer, model_state_dict=weights,
                   optim_state_dict=_fqn_optimizer_state(model, optimizer, plain_optimizer),
                   options=StateDictOptions(full_state_dict=True))


def _load_sharded(folder: Path, state: dict[str, Any]) -> None:
    """``dcp.load`` of ``folder`` into ``state`` through :mod:`attnkit.train.dcp_safe`, so that
    nothing in the folder can run code; every fault is one :class:`AttnkitError`, said by rank 0.

    ``.metadata`` is read once before DCP starts, so that a refused or damaged file is reported
    as itself (DCP would turn it into an AssertionError about rank-local metadata)."""
    import torch.distributed.checkpoint as dcp

    from attnkit.train.dcp_safe import SafePlanner, SafeReader

    reader = SafeReader(folder)
    _agree(folder, reader.read_metadata)

    def load() -> None:
        with warnings.catch_warnings():  # one process without a group is what we mean
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, storage_reader=reader, planner=SafePlanner(reader),
                     no_dist=not dist.is_initialized())

    _agree(folder, load)


def _agree(folder: Path, step: Callable[[], object]) -> None:
    """Run ``step`` on every rank; if it failed anywhere, rank 0 raises the one-line error and
    the others exit quietly (the ranks meet the same fault; the exchange keeps them in step)."""
    from torch.distributed.checkpoint import CheckpointException

    error: str | None = None
    try:
        step()
    except AttnkitError as e:
        error = str(e)
    except CheckpointException as e:  # DCP gathers every rank's exception into one
        error = _first_fault(folder, [exc for exc, _ in e.failures.values()])
    error = next((e for e in all_gather(error) if e), None)
    if error is None:
        return
    if dist.is_initialized() and dist.get_rank() > 0:
        raise SystemExit(2)
    raise AttnkitError(error)


def _first_fault(folder: Path, failures: list[BaseException]) -> str:
    for exc in failures:
        if isinstance(exc, AttnkitError):
            return str(exc)
    for exc in failures:  # a tensor that DCP's own torch.load(weights_only=True) refused
        if isinstance(exc, pickle.UnpicklingError):
            return str(refused(folder, "tensors"))
    reason = (str(failures[0]).strip().splitlines() or [type(failures[0]).__name__])[0][:160]
    return (f"cannot read the sharded checkpoint {folder}: {reason} (the checkpoint is damaged "
            f"or was written for another model; resume from an earlier checkpoint)")


def load_extras(ckpt: Path) -> dict[str, Any]:
    """``training.pt`` of a sharded checkpoint (RNG states, the fp16 scaler): tensors and plain
    data only, read with ``weights_only=True``; a refusal or damage is one line."""
    path = Path(ckpt) / "training.pt"
    try:
        with open(path, "rb") as f:
            state = load_plain(f, path)
    except FileNotFoundError:
        raise AttnkitError(f"{ckpt} has no training.pt, so it cannot be resumed (it can still "
                           f"be sampled)") from None
    if not isinstance(state, dict):
        raise corrupt(path)
    return state


def _is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _tied(model: nn.Module) -> dict[str, list[str]]:
    """First name of each parameter shared under several names -> its other names."""
    first: dict[int, str] = {}
    out: dict[str, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out.setdefault(first[id(p)], []).append(name)
        else:
            first[id(p)] = name
    return out


def full_weights(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The unsharded weights on rank 0 (None elsewhere), each tied tensor once; collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    aliases = {a for names in _tied(model).values() for a in names}
    return {k: v.contiguous() for k, v in sd.items() if k not in aliases}


def save_sharded(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 state: dict[str, Any], extra: dict[str, Any], keep: int = KEEP) -> Path:
    """Write an FSDP checkpoint (see the module docstring) from every rank; collective."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(run_dir) / "checkpoints"
    name = f"step-{state['step']:06d}"
    tmp, final = root / f".tmp-{name}", root / name
    main = dist.get_rank() == 0
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / SHARDED))
    weights = full_weights(model)
    if main:
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(extra, tmp / "training.pt")
        write_json(tmp / "state.json", state)
    dist.barrier()  # every shard is on disk
    if main:
        publish_checkpoint(Path(run_dir), tmp, name, keep)
    dist.barrier()
    return final


def unwrap(module: nn.Module) -> nn.Module:
    """The single-device model inside a DDP wrapper (FSDP shards in place: itself)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return module.module if isinstance(module, DDP) else module


__all__ = ["DistEnv", "all_gather", "all_reduce_sum", "barrier", "check_batch",
           "checkpoint_blocks", "full_weights", "is_sharded", "load_extras", "load_into",
           "no_sync", "parallelize", "read_env", "save_sharded", "setup", "teardown", "unwrap"]
