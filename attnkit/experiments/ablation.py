"""``attnkit experiment ablation``: the changes made to the Transformer since 2017.

Two parts, all decoder-only models on the built-in corpus (character level):

1. **Stability** (Xiong et al., 2020, "On Layer Normalization in the Transformer
   Architecture"): pre-LN against post-LN over a range of peak learning rates, at two
   depths, without learning-rate warmup and without gradient clipping (so nothing hides
   an instability); at the greater depth the same grid again with warmup. A trial whose
   loss becomes non-finite is recorded as *diverged*; one whose final validation loss
   is within 0.1 nats of a unigram model (the token frequencies alone) as *stalled*.
2. **Variants**, one knob at a time against a GPT-2 style base (pre-LN, LayerNorm, GELU,
   learned positions; warmup and clipping on): post-LN, RMSNorm, SwiGLU (hidden width
   ``8 * d_model / 3``, so the parameter count matches GELU's ``4 * d_model``), sinusoidal
   and RoPE positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnkit.experiments import plots
from attnkit.experiments.common import (
    Log,
    Trial,
    finish,
    fmt_int,
    run_trials,
    standard_body,
    start_experiment,
    table,
)


@dataclass(frozen=True)
class Preset:
    d_model: int
    n_heads: int
    context_length: int
    batch_size: int
    depths: tuple[int, ...]  # stability grid; warmup is also tried at the last one
    lrs: tuple[float, ...]
    stability_steps: int
    warmup_steps: int  # for the warmup arm and the variants
    variant_layers: int
    variant_lr: float
    variant_steps: int
    eval_batches: int


PRESETS: dict[str, Preset] = {
    "micro": Preset(d_model=16, n_heads=2, context_length=16, batch_size=4, depths=(1, 2),
                    lrs=(1e-3, 1e-2), stability_steps=3, warmup_steps=1, variant_layers=1,
                    variant_lr=3e-3, variant_steps=3, eval_batches=1),
    "quick": Preset(d_model=64, n_heads=4, context_length=64, batch_size=16, depths=(2, 6),
                    lrs=(1e-3, 3e-3, 1e-2, 3e-2), stability_steps=200, warmup_steps=50,
                    variant_layers=2, variant_lr=3e-3, variant_steps=500, eval_batches=10),
    "full": Preset(d_model=256, n_heads=8, context_length=256, batch_size=64, depths=(6, 12, 24),
                   lrs=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2), stability_steps=3000, warmup_steps=500,
                   variant_layers=6, variant_lr=1e-3, variant_steps=10_000, eval_batches=50),
}

#: A trial that ends within this many nats of the unigram loss learned (almost) nothing.
STALL_MARGIN = 0.1
BASE = dict(norm_position="pre", norm="layernorm", ffn="gelu", pos="learned")
#: name -> (the one knob changed from BASE, the comparison panel it belongs to)
VARIANTS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "base": ({}, ("norm position", "norm", "feed-forward", "positions")),
    "post-ln": ({"norm_position": "post"}, ("norm position",)),
    "rmsnorm": ({"norm": "rmsnorm"}, ("norm",)),
    "swiglu": ({"ffn": "swiglu"}, ("feed-forward",)),  # hidden width set in trials()
    "sinusoidal": ({"pos": "sinusoidal"}, ("positions",)),
    "rope": ({"pos": "rope"}, ("positions",)),
}


def _describe(knobs: dict[str, str]) -> str:
    return f"{knobs['norm_position']}-LN {knobs['norm']}, {knobs['ffn']}, {knobs['pos']} positions"


def trials(p: Preset, device: str) -> list[Trial]:
    data = dict(path="pydoc", tokenizer="char")
    model = dict(family="decoder", d_model=p.d_model, n_heads=p.n_heads,
                 context_length=p.context_length)

    def train(steps: int, lr: float, warmup: int, clip: float) -> dict[str, Any]:
        return dict(steps=steps, batch_size=p.batch_size, lr=lr, warmup_steps=warmup,
                    grad_clip=clip, eval_every=max(1, steps // 5), eval_batches=p.eval_batches,
                    checkpoint_every=max(1, steps // 2), log_every=max(1, steps // 40),
                    samples=0, device=device)

    out = []
    arms = [(depth, 0) for depth in p.depths] + [(p.depths[-1], p.warmup_steps)]
    for depth, warmup in arms:
        for position in ("pre", "post"):
            for lr in p.lrs:
                knobs = dict(BASE, norm_position=position)
                out.append(Trial(
                    f"stability-{position}-L{depth}-lr{lr:g}-w{warmup}",
                    f"stability: {position}-LN, {depth} layers, lr {lr:g}, warmup {warmup}",
                    dict(model=dict(model, n_layers=depth, **knobs),
                         train=train(p.stability_steps, lr, warmup, 0.0), data=data),
                    {"part": "stability", "norm_position": position, "n_layers": depth, "lr": lr,
                     "warmup_steps": warmup}))
    for name, (change, panels) in VARIANTS.items():
        knobs = dict(BASE, **change)
        extra = {}
        if knobs["ffn"] == "swiglu":  # 3 matrices of d x h match GELU's 2 of d x 4d at h = 8d/3
            extra["ffn_hidden"] = round(8 * p.d_model / 3)
        out.append(Trial(f"variant-{name}", f"variant {name}: {_describe(knobs)}",
                         dict(model=dict(model, n_layers=p.variant_layers, **knobs, **extra),
                              train=train(p.variant_steps, p.variant_lr, p.warmup_steps, 1.0),
                              data=data),
                         {"part": "variant", "variant": name, "panels": list(panels), **knobs}))
    return out


def unigram_loss(tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of predicting every token by its training frequency."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(float)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


def run(out_dir: Path, preset: str, log: Log, device: str = "auto") -> dict[str, Any]:
    p = PRESETS[preset]
    start_experiment(out_dir, "ablation", preset)
    all_trials = trials(p, device)
    log(f"ablation ({preset}): {len(all_trials)} trials, d_model {p.d_model}, context "
        f"{p.context_length}")

    def body(trainer, trial: Trial) -> dict[str, Any]:
        record = {"unigram_loss": unigram_loss(trainer.task.data.train, trainer.tokenizer.vocab_size)}
        record.update(standard_body(trainer, trial))
        return record

    records = run_trials(all_trials, out_dir, log, body)
    ceiling = next((r["unigram_loss"] for r in records if "unigram_loss" in r), math.log(100))
    for r in records:
        if r["status"] == "ok" and r["val_loss"] >= ceiling - STALL_MARGIN:
            r["status"] = "stalled"
    stab = [r for r in records if r["part"] == "stability"]
    groups = {}
    for depth, warmup in dict.fromkeys((r["n_layers"], r["warmup_steps"]) for r in stab):
        for position in ("pre", "post"):
            rs = [r for r in stab if (r["n_layers"], r["warmup_steps"], r["norm_position"])
                  == (depth, warmup, position)]
            groups[f"{position}-LN, {depth} layers, warmup {warmup}"] = (
                [r["lr"] for r in rs], [r["val_loss"] for r in rs])
    variants = {r["variant"]: r for r in records if r["part"] == "variant"}
    panels: dict[str, dict[str, list]] = {}
    for name, r in variants.items():
        for panel in r["panels"]:
            panels.setdefault(panel, {})[name] = r["curves"]["val"]
    files = [
        plots.stability(groups, ceiling, out_dir / "ablation_stability.png",
                        f"Pre-LN vs post-LN: final loss vs learning rate "
                        f"({p.stability_steps} steps, no clipping)"),
        plots.curves(panels, out_dir / "ablation_variants.png",
                     f"One change at a time from pre-LN/LayerNorm/GELU/learned "
                     f"({p.variant_layers} layers, lr {p.variant_lr:g})"),
    ]
    results = {"experiment": "ablation", "preset": preset, "config": asdict(p),
               "unigram_loss": ceiling, "trials": records, "plots": [f.name for f in files]}
    return finish(out_dir, results, report(results), log)


def _loss(r: dict[str, Any]) -> str:
    if r["status"] == "diverged":
        return "diverged"
    return f"{r['val_loss']:.4f}" + (" (stalled)" if r["status"] == "stalled" else "")


def report(results: dict[str, Any]) -> str:
    cfg = results["config"]
    stab = [r for r in results["trials"] if r["part"] == "stability"]
    arms = list(dict.fromkeys((r["n_layers"], r["warmup_steps"]) for r in stab))
    rows = []
    for depth, warmup in arms:
        for position in ("pre", "post"):
            rs = {r["lr"]: r for r in stab if (r["n_layers"], r["warmup_steps"], r["norm_position"])
                  == (depth, warmup, position)}
            rows.append([f"{position}-LN", depth, warmup] + [_loss(rs[lr]) for lr in cfg["lrs"]])
    variants = [r for r in results["trials"] if r["part"] == "variant"]
    base = next(r for r in variants if r["variant"] == "base")
    vrows = [[r["variant"], _describe(r), fmt_int(r["params"]), _loss(r),
              f"{r['val_loss'] - base['val_loss']:+.4f}" if r["status"] == "ok" else "-"]
             for r in variants]
    post_no_warmup = [r for r in stab if r["norm_position"] == "post" and r["warmup_steps"] == 0]
    pre_no_warmup = [r for r in stab if r["norm_position"] == "pre" and r["warmup_steps"] == 0]
    bad = {k: sum(r["status"] != "ok" for r in rs) for k, rs in
           (("post", post_no_warmup), ("pre", pre_no_warmup))}
    return f"""# Ablations ({results['preset']} preset)

Decoder, d_model {cfg['d_model']}, {cfg['n_heads']} heads, context {cfg['context_length']},
batch {cfg['batch_size']}, built-in corpus (characters). Unigram baseline: {results['unigram_loss']:.4f}
nats/token; a trial that ends less than {STALL_MARGIN} below it is *stalled*, one whose loss became
NaN/inf *diverged*.

## Stability: final validation loss after {cfg['stability_steps']} steps (no gradient clipping)

Without warmup, {bad['post']} of {len(post_no_warmup)} post-LN trials and {bad['pre']} of
{len(pre_no_warmup)} pre-LN trials diverged or stalled.

{table(["norm position", "layers", "warmup steps"] + [f"lr {lr:g}" for lr in cfg['lrs']], rows)}

![stability](ablation_stability.png)

## Variants: one change from the base
{cfg['variant_layers']} layers, {cfg['variant_steps']} steps, lr {cfg['variant_lr']:g},
warmup {cfg['warmup_steps']} steps, gradient clipping at 1.0.

{table(["variant", "architecture", "params", "final val loss", "vs base"], vrows)}

![variant curves](ablation_variants.png)
"""
