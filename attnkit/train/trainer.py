"""The training loop: any family that honours ``logits, loss = model(x, y)``, on one device
or on several processes under torchrun (:mod:`attnkit.train.distributed`).

Data order is a pure function of (seed, step, micro-step): every batch is
drawn from a generator seeded by those numbers, so a resumed run sees exactly
the batches the uninterrupted run would have seen. Under torchrun every rank
draws the same global batch and trains on its own slice of the rows, so the
loss curve does not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path

import torch

from attnkit.backends import accelerate
from attnkit.config import RunConfig
from attnkit.devices import resolve_device
from attnkit.errors import AttnkitError
from attnkit.models import build_model
from attnkit.runs import latest_checkpoint, write_json
from attnkit.train import distributed
from attnkit.train.budget import check_budget
from attnkit.train.guards import Guard
from attnkit.train.optim import build_optimizer, lr_at
from attnkit.train.progress import Progress
from attnkit.train.tasks import build_task
from attnkit.weights import load_training_state, load_weights, save_checkpoint

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Measured (docs/benchmarks.md, training): on a CPU the eager step, which runs attnkit's oneDNN linear
# layers and block-causal attention, beats what inductor generates for the same model.
COMPILE_ON_CPU = ("note: --train.compile is slower than eager training on a CPU (attnkit's eager "
                  "CPU kernels beat inductor's code: see docs/benchmarks.md); it pays on a GPU")


def pick_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU and MPS."""
    if name != "auto":
        if name != "fp32" and device.type == "cpu" and name == "fp16":
            raise AttnkitError("fp16 autocast is not supported for training on CPU "
                               "(use --train.precision=bf16 or fp32)")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _quiet(*_args, **_kwargs) -> None:
    """The log of ranks other than 0."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, log=print,
                 force: bool = False) -> None:
        """``force``: skip the memory and step-time estimate (:mod:`attnkit.train.budget`)
        that refuses a run which cannot fit or would take minutes per step."""
        self.cfg, self.run_dir, self.force = cfg, Path(run_dir), force
        t = cfg.train
        self.dist, self.device = distributed.setup(t, resolve_device(t.device))
        self.log = log if self.dist.is_main else _quiet
        self.precision = pick_precision(t.precision, self.device)
        torch.manual_seed(t.seed)  # the same initial weights on every rank

        self._build_task(resume)
        self.model = build_model(cfg.model).to(self.device)  # single-device, unwrapped
        accelerate(self.model, purpose="train", backend=t.backend)  # the same function, faster
        self.wrapped = distributed.parallelize(self.model, t, self.dist, self.device,
                                               self.precision)
        self.optimizer = build_optimizer(self.model, t, self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if self.dist.rank > 0:  # dropout masks differ between ranks, as their data do
            torch.manual_seed(t.seed + 1_000_003 * self.dist.rank)
        self.step = 0
        self.elapsed = 0.0
        self.guard = Guard(t.max_bad_steps, t.spike_zscore)
        self.last_checkpoint: str | None = None
        if resume:
            self._restore()
        if t.compile and self.device.type == "cpu":
            self.log(COMPILE_ON_CPU)
        self.forward = torch.compile(self.wrapped) if t.compile else self.wrapped
        self._stop_requested = False
        self._stop_agreed = False  # the ranks' consensus, so that all of them save and stop

    def _build_task(self, resume: bool) -> None:
        """The task, on rank 0 first: it trains the tokenizer, fills the token cache and writes
        config.json and tokenizer.json, which the other ranks then read back."""
        cfg, main = self.cfg, self.dist.is_main
        if self.dist.distributed:  # a fresh runs/NAME-k is picked by rank 0 for everyone
            self.run_dir = Path(distributed.all_gather(str(self.run_dir))[0])
        error = None
        if main:
            try:
                self.task = build_task(cfg, self.run_dir, resume)
                self._check_vocab()
                if not self.force:  # before anything is allocated or written
                    check_budget(cfg, self.device, self.dist.world,
                                 PRECISIONS[self.precision] or torch.float32)
                if not resume:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    write_json(self.run_dir / "config.json", cfg.to_dict())
                    if self.tokenizer is not None:  # images have none
                        self.tokenizer.save(self.run_dir / "tokenizer.json")
            except AttnkitError as e:
                error = str(e)
                if self.dist.world == 1:
                    raise
        if self.dist.world > 1:
            if self.dist.distributed:
                error = distributed.all_gather(error)[0]
            if error is not None:  # rank 0 says it
                if main:
                    raise AttnkitError(error)
                raise SystemExit(2)
        if not main:
            self.task = build_task(cfg, self.run_dir, resume=True)
            self._check_vocab()

    def _check_vocab(self) -> None:
        self.tokenizer = self.task.tokenizer
        model = self.cfg.model
        if self.tokenizer is None:  # images: no vocabulary
            return
        if model.vocab_size == 0:
            model.vocab_size = self.tokenizer.vocab_size
        elif model.vocab_size < self.tokenizer.vocab_size:
            raise AttnkitError(f"model.vocab_size={model.vocab_size} is smaller than the "
                               f"tokenizer's {self.tokenizer.vocab_size} (leave it 0 to match)")

    # --- state -----------------------------------------------------------------------------
    def _restore(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if self.dist.mode == "none" and not distributed.is_sharded(ckpt):
            load_weights(self.model, ckpt / "model.safetensors")
            state = load_training_state(ckpt)
            self.optimizer.load_state_dict(state["optimizer"])
        elif distributed.is_sharded(ckpt):  # written by FSDP, at any world size
            distributed.load_into(ckpt, self.model, self.optimizer, None)
            state = distributed.load_extras(ckpt)
        else:
            state = load_training_state(ckpt)
            distributed.load_into(ckpt, self.model, self.optimizer, state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        meta = json.loads((ckpt / "state.json").read_text())
        self.step, self.elapsed = meta["step"], meta.get("elapsed_s", 0.0)
        self.guard.load_state_dict(meta.get("guard", {}))
        self.last_checkpoint = ckpt.name
        self._restore_rng(state)
        if self.dist.is_main:
            self._truncate_metrics()
        self.log(f"resumed {self.run_dir} at step {self.step} from {ckpt.name}")

    def _restore_rng(self, state: dict) -> None:
        """Each rank's RNG as saved; at another world size, rank 0 takes the saved rank 0's
        and the others start fresh streams (dropout masks only; the data order is unchanged)."""
        r = self.dist.rank
        cpu, cuda = state.get("rng_cpu_ranks"), state.get("rng_cuda_ranks")
        if cpu is not None and len(cpu) == self.dist.world:
            torch.set_rng_state(cpu[r])
            if self.device.type == "cuda" and cuda is not None:
                torch.cuda.set_rng_state(cuda[r])
            return
        if r > 0:
            torch.manual_seed(self.cfg.train.seed + 1_000_003 * r + self.step)
            return
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])

    def _truncate_metrics(self) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be redone)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                break  # a line cut short by a crash: everything after it is suspect
        write_text = "".join(k + "\n" for k in keep)
        tmp = path.with_name(".metrics.jsonl.tmp")
        try:
            tmp.write_text(write_text, encoding="utf-8")
            tmp.replace(path)
        except OSError as e:
            tmp.unlink(missing_ok=True)  # a full disk leaves no empty temporary file behind
            raise AttnkitError(f"could not rewrite {path} to resume: {e.strerror or e} (free disk "
                               f"space, then resume again; the run is unchanged)") from None

    def save(self) -> Path:
        """A checkpoint of the unwrapped model; under torchrun every rank must call it."""
        extra = {"rng_cpu": torch.get_rng_state(), "scaler": self.scaler.state_dict()}
        if self.device.type == "cuda":
            extra["rng_cuda"] = torch.cuda.get_rng_state()
        if self.dist.world > 1:
            extra["rng_cpu_ranks"] = distributed.all_gather(extra["rng_cpu"])
            if self.device.type == "cuda":
                extra["rng_cuda_ranks"] = distributed.all_gather(extra["rng_cuda"])
        state = {"step": self.step, "elapsed_s": round(self.elapsed, 3),
                 "guard": self.guard.state_dict()}
        keep = self.cfg.train.keep_checkpoints
        if self.dist.mode == "fsdp":
            path = distributed.save_sharded(self.run_dir, self.model, self.optimizer, state,
                                            extra, keep)
        elif self.dist.world == 1:
            path = save_checkpoint(self.run_dir, self.model, self.optimizer, state, extra, keep)
        else:
            if self.dist.is_main:  # ddp: the weights are the same on every rank
                save_checkpoint(self.run_dir, self.model, self.optimizer, state, extra, keep)
            distributed.barrier()
            path = self.run_dir / "checkpoints" / f"step-{self.step:06d}"
        self.last_checkpoint = path.name
        return path

    # --- the loop --------------------------------------------------------------------------
    def autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def evaluate(self) -> dict[str, float]:
        """The task's validation metrics; always ``val_loss``, the same batches every time.
        Every rank evaluates the same whole batches, so all agree with a one-process run
        (FSDP needs every rank in each forward anyway; DDP evaluates the unwrapped model)."""
        t = self.cfg.train
        model = self.model if self.dist.mode == "ddp" else self.forward
        return self.task.evaluate(model, self.autocast, t.batch_size // t.grad_accum,
                                  t.eval_batches, self.device)

    def batch(self, step: int, micro: int, size: int) -> dict[str, torch.Tensor]:
        """This rank's rows of the global training micro-batch (``size`` sequences)."""
        if self.dist.world == 1:
            return self.task.batch("train", step, micro, size, self.device)
        rows = self.dist.rows(size)
        batch = self.task.batch("train", step, micro, size, torch.device("cpu"))
        return {k: v[rows].to(self.device) for k, v in batch.items()}

    def train_step(self) -> float:
        t = self.cfg.train
        lr = lr_at(self.step, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro_bs = t.batch_size // t.grad_accum
        total = 0.0
        self.tokens_this_step = 0
        for micro in range(t.grad_accum):
            batch = self.batch(self.step, micro, micro_bs)
            self.tokens_this_step += self.task.tokens_in(batch)
            # Gradients cross the ranks once per step, after the last micro-batch.
            with distributed.no_sync(self.wrapped, self.dist, last=micro == t.grad_accum - 1):
                with self.autocast():
                    _, loss = self.forward(**batch)
                self.scaler.scale(loss / t.grad_accum).backward()
            total += loss.item() / t.grad_accum
        if self.dist.world > 1:  # the global mean loss, all tokens, and whether any rank must stop
            total, tokens, stop = distributed.all_reduce_sum(
                [total, self.tokens_this_step, float(self._stop_requested)], self.device)
            total /= self.dist.world
            self.tokens_this_step, self._stop_agreed = int(tokens), stop > 0
        self.skipped = self.guard.check(total, self._clip_gradients())
        if self.skipped is None:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    def _clip_gradients(self) -> float | None:
        """Clip to ``train.grad_clip`` (if set) and return the gradient norm before clipping;
        None under fp16 loss scaling, whose scaler skips non-finite gradients itself."""
        self.scaler.unscale_(self.optimizer)
        if self.precision == "fp16":
            if self.cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            return None
        limit = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit)
        if hasattr(norm, "full_tensor"):  # FSDP: a sharded (DTensor) norm
            norm = norm.full_tensor()
        return float(norm)

    def _should_stop(self) -> bool:
        return self._stop_agreed if self.dist.world > 1 else self._stop_requested

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_requested = True

    def run(self) -> dict:
        """Train to ``train.steps``; returns a summary (final val loss, tokens/s, wall time)."""
        t = self.cfg.train
        self.log(f"model: {self.model.describe()}")
        self.log(self.task.describe())
        self.log(f"train: {t.steps} steps x {t.batch_size} sequences on {self.device} "
                 f"({self.precision}) -> {self.run_dir}")
        for note in self.dist.notes:
            self.log(note)
        if self.dist.mode != "none":
            self.log(f"parallel: {self.dist.mode} over {self.dist.world} process"
                     f"{'es' if self.dist.world > 1 else ''}, {t.batch_size // self.dist.world} "
                     f"sequences each per step")
        main = self.dist.is_main  # only rank 0 writes metrics and shows progress
        metrics = open(self.run_dir / "metrics.jsonl" if main else os.devnull, "a",
                       encoding="utf-8")
        progress = Progress(t.steps, start=self.step, every=max(t.log_every, t.steps // 20),
                            stream=None if main else metrics)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in handlers:
            signal.signal(s, self._on_signal)
        val_loss = math.nan
        rate = 0.0
        tokens_done = 0
        t_start = time.perf_counter()
        try:
            self.model.train()
            while self.step < t.steps:
                t0 = time.perf_counter()
                loss = self.train_step()
                dt = time.perf_counter() - t0
                self.elapsed += dt
                tokens_done += self.tokens_this_step
                now = self.tokens_this_step / dt
                rate = now if rate == 0 else 0.9 * rate + 0.1 * now
                progress.update(self.step, loss, rate)
                record = {"step": self.step,
                          "loss": round(loss, 5) if math.isfinite(loss) else None,
                          "lr": float(f"{self.optimizer.param_groups[0]['lr']:.6g}"),
                          "tokens_per_s": round(rate, 1)}
                if self.skipped:
                    record["skipped"] = self.skipped
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    what = "a non-finite loss or gradient" if self.skipped == "non-finite" \
                        else f"a loss spike ({loss:.4f})"
                    progress.print(f"step {self.step}: skipped the update ({what}); "
                                   f"{self.guard.total_skipped} skipped so far")
                    self.guard.raise_if_hopeless(self.step, self.last_checkpoint, self.run_dir)
                evaluate = self.step % t.eval_every == 0 or self.step == t.steps
                if evaluate:
                    results = self.evaluate()
                    val_loss = results["val_loss"]
                    record.update({k: round(v, 5) for k, v in results.items()})
                    extra = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in results.items()
                                    if k != "val_loss")
                    progress.print(f"step {self.step}: train loss {loss:.4f}, val loss "
                                   f"{val_loss:.4f}{extra}")
                if (evaluate or self.step % t.log_every == 0) and not self.skipped:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    self.save()
                if self._should_stop():
                    self.save()
                    progress.print(f"interrupted: checkpoint saved at step {self.step}; "
                                   f"resume with `attnkit train --resume {self.run_dir}`")
                    break
        finally:
            progress.close()
            metrics.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        wall = time.perf_counter() - t_start
        summary = {"step": self.step, "val_loss": val_loss, "wall_s": round(wall, 1),
                   "tokens_per_s": round(tokens_done / max(wall, 1e-9), 1),
                   "interrupted": self._should_stop(), "skipped_steps": self.guard.total_skipped}
        summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
        if self.device.type == "cuda":
            summary["peak_cuda_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return summary

    def samples(self, n: int, max_new_tokens: int) -> list[str]:
        """A few outputs of the trained model, for a look at what it learned. Under FSDP every
        rank must call it (each forward gathers the shards); under DDP ranks > 0 get []."""
        if not self.dist.is_main and self.dist.mode != "fsdp":
            return []
        return self.task.samples(self.model, n, max_new_tokens, self.cfg.train.seed)

    def report(self) -> str | None:
        """The task's closing report (a classifier's accuracy and confusion matrix), or None."""
        return self.task.report(self.model)
