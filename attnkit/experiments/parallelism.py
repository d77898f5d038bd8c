"""``attnkit experiment parallelism``: how training time grows with sequence length.

Self-attention computes every position of a sequence at once; an LSTM must step
through them one after another. We train a Transformer and an LSTM of about the same
non-embedding size for a few steps at each sequence length ``T``, keeping the tokens
per step fixed (``batch = tokens_per_step / T``), and time each training step
(forward, backward, optimizer) after a few warm-up steps; the median is reported.

With the tokens fixed, an ideal parallel machine would make the step time flat in
``T`` for the Transformer until attention's ``T^2`` term dominates, while the LSTM's
``T`` sequential steps, each over a batch that shrinks as ``T`` grows, use the
hardware less and less. On a 2-core CPU there is little parallel hardware to waste,
so the difference is much smaller than on a GPU.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from attnkit.experiments import plots
from attnkit.experiments.common import (
    Log,
    Trial,
    finish,
    fmt_int,
    lstm_width_for,
    run_trials,
    start_experiment,
    table,
)
from attnkit.experiments.scaling import transformer_non_embedding


@dataclass(frozen=True)
class Preset:
    lengths: tuple[int, ...]
    tokens_per_step: int  # batch size = tokens_per_step // T
    d_model: int
    n_layers: int
    n_heads: int
    warmup_steps: int  # untimed steps first
    timed_steps: int


PRESETS: dict[str, Preset] = {
    "micro": Preset(lengths=(8, 16, 32), tokens_per_step=64, d_model=16, n_layers=1, n_heads=2,
                    warmup_steps=1, timed_steps=2),
    "quick": Preset(lengths=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096), tokens_per_step=4096,
                    d_model=64, n_layers=2, n_heads=4, warmup_steps=3, timed_steps=10),
    "full": Preset(lengths=(64, 128, 256, 512, 1024, 2048, 4096), tokens_per_step=65_536,
                   d_model=512, n_layers=6, n_heads=8, warmup_steps=5, timed_steps=20),
}


def trials(p: Preset, device: str) -> list[Trial]:
    width = lstm_width_for(transformer_non_embedding(p.d_model, p.n_layers), p.n_layers)
    out = []
    for arch, model in (("transformer", dict(family="decoder", d_model=p.d_model,
                                             n_layers=p.n_layers, n_heads=p.n_heads)),
                        ("lstm", dict(family="lstm", d_model=width, n_layers=p.n_layers))):
        for T in p.lengths:
            batch = max(1, p.tokens_per_step // T)
            train = dict(steps=p.warmup_steps + p.timed_steps, batch_size=batch, warmup_steps=0,
                         schedule="constant", eval_batches=1, samples=0, device=device)
            out.append(Trial(f"{arch}-T{T}", f"{arch} d_model={model['d_model']}, T={T}, "
                             f"batch {batch}", dict(model=dict(model, context_length=T),
                                                    train=train, data=dict(path="pydoc")),
                             {"arch": arch, "d_model": model["d_model"], "T": T, "batch_size": batch}))
    return out


def run(out_dir: Path, preset: str, log: Log, device: str = "auto") -> dict[str, Any]:
    p = PRESETS[preset]
    start_experiment(out_dir, "parallelism", preset)
    log(f"parallelism ({preset}): T = {', '.join(map(str, p.lengths))}, "
        f"{fmt_int(p.tokens_per_step)} tokens per step, {p.timed_steps} timed steps each")

    def body(trainer, trial: Trial) -> dict[str, Any]:
        """Time training steps directly (``Trainer.run`` would mix in evaluation and logging)."""
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        for _ in range(p.warmup_steps):
            trainer.train_step()
        times = []
        for _ in range(p.timed_steps):
            sync()
            t0 = time.perf_counter()
            trainer.train_step()
            sync()
            times.append(time.perf_counter() - t0)
        trainer.save()
        step_s = statistics.median(times)
        tokens = trial.meta["T"] * trial.meta["batch_size"]
        return {"step_s": step_s, "tokens_per_s": tokens / step_s,
                "step_times": [round(x, 6) for x in times], "val_loss": None}

    records = run_trials(trials(p, device), out_dir, log, body)
    series = {}
    for arch in ("transformer", "lstm"):
        ok = [r for r in records if r["arch"] == arch and r["status"] == "ok"]
        series[arch] = ([r["T"] for r in ok], [r["step_s"] for r in ok],
                        [r["tokens_per_s"] for r in ok])
    device_name = str(torch.device(device) if device != "auto" else _auto_device())
    plot = plots.timing(series, out_dir / "parallelism.png",
                        f"Training speed vs sequence length ({device_name}, "
                        f"{torch.get_num_threads()} threads)")
    results = {"experiment": "parallelism", "preset": preset, "config": asdict(p),
               "device": device_name, "threads": torch.get_num_threads(), "trials": records,
               "plots": [plot.name]}
    return finish(out_dir, results, report(results), log)


def _auto_device() -> torch.device:
    from attnkit.devices import resolve_device

    return resolve_device("auto")


def report(results: dict[str, Any]) -> str:
    by = {(r["arch"], r["T"]): r for r in results["trials"]}
    lengths = results["config"]["lengths"]
    rows = []
    for T in lengths:
        tr, ls = by[("transformer", T)], by[("lstm", T)]
        rows.append([T, tr["batch_size"], f"{tr['step_s'] * 1000:.1f}", f"{ls['step_s'] * 1000:.1f}",
                     fmt_int(tr["tokens_per_s"]), fmt_int(ls["tokens_per_s"]),
                     f"{ls['step_s'] / tr['step_s']:.2f}x"])
    first, last = lengths[0], lengths[-1]
    growth = {a: by[(a, last)]["step_s"] / by[(a, first)]["step_s"] for a in ("transformer", "lstm")}
    sizes = {a: fmt_int(by[(a, first)]["non_embedding_params"]) for a in ("transformer", "lstm")}
    return f"""# Parallelism: training speed vs sequence length ({results['preset']} preset)

Device: {results['device']} ({results['threads']} threads). Tokens per step fixed at
{fmt_int(results['config']['tokens_per_step'])} (batch = tokens / T); median of
{results['config']['timed_steps']} timed steps after {results['config']['warmup_steps']} warm-up steps.
Non-embedding parameters: Transformer {sizes['transformer']}, LSTM {sizes['lstm']}.

From T={first} to T={last} the step time grows {growth['transformer']:.2f}x for the Transformer
and {growth['lstm']:.2f}x for the LSTM.

{table(["T", "batch", "Transformer ms/step", "LSTM ms/step", "Transformer tokens/s",
        "LSTM tokens/s", "LSTM / Transformer time"], rows)}

![step time and throughput vs T](parallelism.png)
"""
