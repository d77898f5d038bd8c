"""The training loop: one device, any family that honours ``logits, loss = model(x, y)``.

Data order is a pure function of (seed, step, micro-step): every batch is
drawn from a generator seeded by those numbers, so a resumed run sees exactly
the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path

import torch

from attnkit.checkpoint import (
    latest_checkpoint,
    load_training_state,
    load_weights,
    resolve_device,
    save_checkpoint,
    write_json,
)
from attnkit.config import RunConfig
from attnkit.errors import AttnkitError
from attnkit.models import build_model
from attnkit.train.optim import build_optimizer, lr_at
from attnkit.train.progress import Progress
from attnkit.train.tasks import build_task

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def describe_model(model: torch.nn.Module, cfg) -> str:
    """One line: size, family and the knobs that matter."""
    n = f"{model.num_params() / 1e6:.2f}M parameters"
    if cfg.family == "lstm":
        return f"{n} | LSTM, {cfg.n_layers} layers, d_model {cfg.d_model}"
    layers = (f"{cfg.n_encoder_layers}+{cfg.n_decoder_layers} layers" if cfg.family == "seq2seq"
              else f"{cfg.n_layers} layers")
    kv = f" ({cfg.n_kv_heads} kv)" if cfg.n_kv_heads != cfg.n_heads else ""
    return (f"{n} | {cfg.family}, {layers}, d_model {cfg.d_model}, {cfg.n_heads} heads{kv}, "
            f"context {cfg.context_length} | pos {cfg.pos}, {cfg.norm_position}-{cfg.norm}, "
            f"ffn {cfg.ffn}")


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, log=print) -> None:
        self.cfg, self.run_dir, self.log = cfg, Path(run_dir), log
        t = cfg.train
        self.device = resolve_device(t.device)
        self.precision = pick_precision(t.precision, self.device)
        torch.manual_seed(t.seed)

        self.task = build_task(cfg, self.run_dir, resume)
        self.tokenizer = self.task.tokenizer
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = self.tokenizer.vocab_size
        elif cfg.model.vocab_size < self.tokenizer.vocab_size:
            raise AttnkitError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the "
                               f"tokenizer's {self.tokenizer.vocab_size} (leave it 0 to match)")

        self.model = build_model(cfg.model).to(self.device)
        self.optimizer = build_optimizer(self.model, t, self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step = 0
        self.elapsed = 0.0
        if resume:
            self._restore()
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", cfg.to_dict())
            self.tokenizer.save(self.run_dir / "tokenizer.json")
        self.forward = torch.compile(self.model) if t.compile else self.model
        self._stop_requested = False

    # --- state -----------------------------------------------------------------------------
    def _restore(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        load_weights(self.model, ckpt / "model.safetensors")
        state = load_training_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        meta = json.loads((ckpt / "state.json").read_text())
        self.step, self.elapsed = meta["step"], meta.get("elapsed_s", 0.0)
        self._truncate_metrics()
        self.log(f"resumed {self.run_dir} at step {self.step} from {ckpt.name}")

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
        tmp.write_text(write_text, encoding="utf-8")
        tmp.replace(path)

    def save(self) -> Path:
        extra = {"rng_cpu": torch.get_rng_state(), "scaler": self.scaler.state_dict()}
        if self.device.type == "cuda":
            extra["rng_cuda"] = torch.cuda.get_rng_state()
        state = {"step": self.step, "elapsed_s": round(self.elapsed, 3)}
        return save_checkpoint(self.run_dir, self.model, self.optimizer, state, extra)

    # --- the loop --------------------------------------------------------------------------
    def autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def evaluate(self) -> dict[str, float]:
        """The task's validation metrics; always ``val_loss``, the same batches every time."""
        t = self.cfg.train
        return self.task.evaluate(self.forward, self.autocast, t.batch_size // t.grad_accum,
                                  t.eval_batches, self.device)

    def train_step(self) -> float:
        t = self.cfg.train
        lr = lr_at(self.step, t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro_bs = t.batch_size // t.grad_accum
        total = 0.0
        self.tokens_this_step = 0
        for micro in range(t.grad_accum):
            batch = self.task.batch("train", self.step, micro, micro_bs, self.device)
            self.tokens_this_step += self.task.tokens_in(batch)
            with self.autocast():
                _, loss = self.forward(**batch)
            self.scaler.scale(loss / t.grad_accum).backward()
            total += loss.item() / t.grad_accum
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_requested = True

    def run(self) -> dict:
        """Train to ``train.steps``; returns a summary (final val loss, tokens/s, wall time)."""
        t = self.cfg.train
        self.log(f"model: {describe_model(self.model, self.cfg.model)}")
        self.log(self.task.describe())
        self.log(f"train: {t.steps} steps x {t.batch_size} sequences on {self.device} "
                 f"({self.precision}) -> {self.run_dir}")
        metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        progress = Progress(t.steps, start=self.step, every=max(t.log_every, t.steps // 20))
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
                record = {"step": self.step, "loss": round(loss, 5),
                          "lr": float(f"{self.optimizer.param_groups[0]['lr']:.6g}"),
                          "tokens_per_s": round(rate, 1)}
                if not math.isfinite(loss):
                    raise AttnkitError(f"loss became {loss} at step {self.step} (lower "
                                       f"--train.lr or raise --train.warmup_steps)")
                evaluate = self.step % t.eval_every == 0 or self.step == t.steps
                if evaluate:
                    results = self.evaluate()
                    val_loss = results["val_loss"]
                    record.update({k: round(v, 5) for k, v in results.items()})
                    extra = "".join(f", {k.replace('_', ' ')} {v:.4f}" for k, v in results.items()
                                    if k != "val_loss")
                    progress.print(f"step {self.step}: train loss {loss:.4f}, val loss "
                                   f"{val_loss:.4f}{extra}")
                if evaluate or self.step % t.log_every == 0:
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                if self.step % t.checkpoint_every == 0 or self.step == t.steps:
                    self.save()
                if self._stop_requested:
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
                   "interrupted": self._stop_requested}
        summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
        if self.device.type == "cuda":
            summary["peak_cuda_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return summary

    def samples(self, n: int, max_new_tokens: int) -> list[str]:
        """A few outputs of the trained model, for a look at what it learned."""
        return self.task.samples(self.model, n, max_new_tokens, self.cfg.train.seed)
