"""``attnkit experiment scaling``: does loss fall as a power law of model size?

A ladder of Transformer widths (fixed depth) and, for each, an LSTM with about the same
number of non-embedding parameters; every model sees the same corpus (the built-in
one, character level) and the same number of training tokens. For each architecture
we fit ``L(N) = a * N^(-alpha) + c`` (:mod:`attnkit.experiments.fit`), where ``N``
counts non-embedding parameters (Kaplan et al., 2020).

Compute is estimated as ``C = 6 * N * D`` for both architectures (``D`` training
tokens): every non-embedding weight does one multiply-add per token forward and two
backward. That is exact for the LSTM's gate matrices and ignores the Transformer's
attention scores (``6 * n_layers * T * d_model`` per token, small at these lengths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
from attnkit.experiments.fit import PowerLawFit, fit_power_law


@dataclass(frozen=True)
class Preset:
    widths: tuple[int, ...]  # Transformer d_model, smallest first
    n_layers: int  # both architectures
    context_length: int
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    eval_batches: int
    head_size: int = 32  # n_heads = max(1, d_model // head_size)


PRESETS: dict[str, Preset] = {
    "micro": Preset(widths=(8, 16, 24, 32, 48), n_layers=1, context_length=16, batch_size=4,
                    steps=4, lr=3e-3, warmup_steps=1, eval_batches=1),
    # ~60x in non-embedding parameters, 0.6M tokens per model.
    "quick": Preset(widths=(16, 24, 32, 48, 64, 96, 128), n_layers=2, context_length=64,
                    batch_size=16, steps=600, lr=3e-3, warmup_steps=50, eval_batches=20),
    # ~100x, 160M tokens per model: for a GPU.
    "full": Preset(widths=(64, 96, 128, 192, 256, 384, 512, 640), n_layers=4, context_length=256,
                   batch_size=64, steps=10_000, lr=1e-3, warmup_steps=500, eval_batches=50,
                   head_size=64),
}


def tokens_per_trial(p: Preset) -> int:
    return p.steps * p.batch_size * p.context_length


def transformer_non_embedding(d: int, n_layers: int) -> int:
    """Non-embedding parameters of a GPT-2 style block stack (with biases and LayerNorms)."""
    per_layer = 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d  # attention, MLP, two norms
    return n_layers * per_layer + 2 * d  # + final norm


def trials(p: Preset, device: str) -> list[Trial]:
    train = dict(steps=p.steps, batch_size=p.batch_size, lr=p.lr, warmup_steps=p.warmup_steps,
                 eval_every=max(1, p.steps // 5), eval_batches=p.eval_batches,
                 checkpoint_every=max(1, p.steps // 2), log_every=max(1, p.steps // 50),
                 samples=0, device=device)
    data = dict(path="pydoc", tokenizer="char")
    out = []
    for d in p.widths:
        heads = max(1, d // p.head_size)
        model = dict(family="decoder", d_model=d, n_heads=heads, n_layers=p.n_layers,
                     context_length=p.context_length)
        out.append(Trial(f"transformer-d{d}", f"transformer d_model={d} ({p.n_layers} layers, "
                         f"{heads} heads)", dict(model=model, train=train, data=data),
                         {"arch": "transformer", "d_model": d, "n_layers": p.n_layers}))
    for d in p.widths:
        w = lstm_width_for(transformer_non_embedding(d, p.n_layers), p.n_layers)
        model = dict(family="lstm", d_model=w, n_layers=p.n_layers, context_length=p.context_length)
        out.append(Trial(f"lstm-d{w}", f"LSTM d_model={w} ({p.n_layers} layers; matches "
                         f"transformer d_model={d})", dict(model=model, train=train, data=data),
                         {"arch": "lstm", "d_model": w, "n_layers": p.n_layers}))
    return out


def run(out_dir: Path, preset: str, log: Log, device: str = "auto") -> dict[str, Any]:
    p = PRESETS[preset]
    start_experiment(out_dir, "scaling", preset)
    tokens = tokens_per_trial(p)
    log(f"scaling ({preset}): {len(p.widths)} sizes x 2 architectures, {fmt_int(tokens)} "
        f"training tokens each")
    records = run_trials(trials(p, device), out_dir, log)
    for r in records:
        r["flops"] = 6 * r["non_embedding_params"] * tokens
    fits: dict[str, PowerLawFit | None] = {}
    points: dict[str, tuple[list[float], list[float]]] = {}
    for arch in ("transformer", "lstm"):
        ok = [r for r in records if r["arch"] == arch and r["status"] == "ok"]
        xs, ys = [r["non_embedding_params"] for r in ok], [r["val_loss"] for r in ok]
        points[arch] = (xs, ys)
        fits[arch] = fit_power_law(xs, ys) if len(ok) >= 3 else None
    plot_files = [
        plots.scaling(points, fits, out_dir / "scaling_params.png",
                      "non-embedding parameters N (log scale)",
                      f"Loss vs model size ({fmt_int(tokens)} tokens per model)"),
        plots.scaling({a: ([6 * n * tokens for n in xs], ys) for a, (xs, ys) in points.items()},
                      fits, out_dir / "scaling_compute.png",
                      "training compute C = 6·N·D (FLOPs, log scale)",
                      "Loss vs training compute (same fits)", x_per_n=6 * tokens),
    ]
    results = {
        "experiment": "scaling", "preset": preset, "config": asdict(p),
        "tokens_per_trial": tokens, "compute": "C = 6 * N_non_embedding * tokens (both)",
        "fits": {a: (f.to_dict() if f else None) for a, f in fits.items()},
        "trials": records, "plots": [f.name for f in plot_files],
    }
    return finish(out_dir, results, report(results), log)


def report(results: dict[str, Any]) -> str:
    rows = [[r["arch"], r["d_model"], r["n_layers"], fmt_int(r["non_embedding_params"]),
             fmt_int(r["params"]), f"{r['flops']:.2e}",
             "diverged" if r["status"] != "ok" else f"{r['val_loss']:.4f}"]
            for r in results["trials"]]
    fit_rows = []
    for arch, f in results["fits"].items():
        if f is None:
            fit_rows.append([arch, "-", "-", "-", "-", "-"])
        else:
            fit_rows.append([arch, f"{f['alpha']:.3f}", f"{f['a']:.3g}", f"{f['c']:.3f}",
                             f"{f['r2']:.3f}", f"{f['rmse']:.4f}"])
    sizes = [r["non_embedding_params"] for r in results["trials"] if r["arch"] == "transformer"]
    span = max(sizes) / min(sizes)
    return f"""# Scaling: loss vs parameters ({results['preset']} preset)

Same corpus (built-in, character level) and {fmt_int(results['tokens_per_trial'])} training
tokens for every model; the Transformer ladder spans {span:.0f}x in non-embedding parameters.
Fit: `L(N) = a * N^(-alpha) + c`, N = non-embedding parameters; quality is R² and RMSE of
log L. Compute: {results['compute']}.

## Fits

{table(["architecture", "alpha", "a", "c", "R² (log L)", "RMSE (log L)"], fit_rows)}

## Trials

{table(["architecture", "d_model", "layers", "N (non-emb.)", "params", "FLOPs", "val loss"], rows)}

![loss vs parameters](scaling_params.png)
![loss vs compute](scaling_compute.png)
"""
