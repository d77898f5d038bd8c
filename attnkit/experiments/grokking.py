"""``attnkit experiment grokking``: a Transformer memorises ``a + b mod p`` first and only later
generalises (Power et al. 2022, "Grokking: generalization beyond overfitting on small
algorithmic datasets").

Each trial trains a small decoder on a fraction of all equations ``a + b = c (mod p)``
(:mod:`attnkit.data.modular`, ``data.task=modular``) with AdamW, and evaluates exact-answer
accuracy on every training equation and every held-out equation at regular steps. The
trials differ only in weight decay, which Power et al. found the strongest lever on how
soon held-out accuracy follows training accuracy. A trial stops early once held-out
accuracy has stayed at 99% or more for ``hold`` times as many steps as it took to get there
(so the plot shows it staying there on a log axis).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from attnkit.data.modular import OPS
from attnkit.experiments import plots
from attnkit.experiments.common import Log, Trial, finish, fmt_int, run_trials, start_experiment, table

TARGET = 0.99  # held-out accuracy that counts as generalised


@dataclass(frozen=True)
class Preset:
    op: str
    p: int
    train_fraction: float
    d_model: int
    n_layers: int
    n_heads: int
    steps: int  # the most steps a trial takes
    batch_size: int
    lr: float
    warmup_steps: int
    eval_every: int
    weight_decays: tuple[float, ...]
    hold: float = 2.0  # stop at step >= hold * (first step at TARGET); 0 never stops early


PRESETS: dict[str, Preset] = {
    "micro": Preset(op="add", p=7, train_fraction=0.5, d_model=16, n_layers=1, n_heads=2, steps=4,
                    batch_size=16, lr=1e-3, warmup_steps=1, eval_every=2, weight_decays=(0.1, 1.0)),
    # p=59 rather than 97 to fit 2 CPU cores in minutes; the full preset uses the paper's p=97
    "quick": Preset(op="add", p=59, train_fraction=0.4, d_model=128, n_layers=1, n_heads=4,
                    steps=2000, batch_size=512, lr=3e-3, warmup_steps=10, eval_every=25,
                    weight_decays=(0.5, 1.0, 2.0)),
    "full": Preset(op="add", p=97, train_fraction=0.5, d_model=128, n_layers=2, n_heads=4,
                   steps=20_000, batch_size=512, lr=1e-3, warmup_steps=10, eval_every=25,
                   weight_decays=(0.1, 0.5, 1.0)),
}


def data_path(p: Preset) -> str:
    return f"modular:{p.op}:p={p.p}:train={p.train_fraction:g}"


def trials(p: Preset, device: str) -> list[Trial]:
    out = []
    for wd in p.weight_decays:
        # constant lr after a short warmup, no clipping, no dropout: the paper's setting
        train = dict(steps=p.steps, batch_size=p.batch_size, lr=p.lr, warmup_steps=p.warmup_steps,
                     schedule="constant", weight_decay=wd, beta1=0.9, beta2=0.98, grad_clip=0.0,
                     eval_every=p.eval_every, checkpoint_every=max(1, p.steps // 4),
                     log_every=p.eval_every, samples=0, device=device)
        model = dict(family="decoder", d_model=p.d_model, n_layers=p.n_layers, n_heads=p.n_heads,
                     context_length=4, dropout=0.0)
        out.append(Trial(f"wd{wd:g}", f"weight decay {wd:g}",
                         dict(model=model, train=train, data=dict(path=data_path(p), task="modular")),
                         {"weight_decay": wd}))
    return out


def accuracy_curves(run_dir: Path) -> dict[str, list[float]]:
    """``{"step": [...], "train": [...], "held_out": [...]}`` from the run's evaluations."""
    out: dict[str, list[float]] = {"step": [], "train": [], "held_out": []}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if "val_accuracy" in rec:
            out["step"].append(rec["step"])
            out["train"].append(rec["train_accuracy"])
            out["held_out"].append(rec["val_accuracy"])
    return out


def first_step(steps: list[float], values: list[float], target: float = TARGET) -> int | None:
    """The first evaluated step whose value is at least ``target``, or None."""
    return next((int(s) for s, v in zip(steps, values) if v >= target), None)


def run(out_dir: Path, preset: str, log: Log, device: str = "auto") -> dict[str, Any]:
    p = PRESETS[preset]
    start_experiment(out_dir, "grokking", preset)
    n = p.p * p.p
    log(f"grokking ({preset}): a {OPS[p.op][0]} b mod {p.p}, "
        f"{p.train_fraction:.0%} of the {fmt_int(n)} equations for training, weight decay "
        f"{', '.join(f'{wd:g}' for wd in p.weight_decays)}, up to {p.steps} steps each")

    def body(trainer, trial: Trial) -> dict[str, Any]:
        evaluate, reached = trainer.task.evaluate, []

        def watched(*args, **kwargs) -> dict[str, float]:
            results = evaluate(*args, **kwargs)
            if results["val_accuracy"] >= TARGET and not reached:
                reached.append(trainer.step)
            last = trainer.cfg.train.steps
            if reached and p.hold > 0 and p.hold * reached[0] <= trainer.step < last:
                # the loop ends here, with its final checkpoint, as if this were the last step
                trainer.cfg.train.steps = trainer.step
                log(f"  stopping early at step {trainer.step}: held-out accuracy >= {TARGET:.0%} "
                    f"since step {reached[0]}")
            return results

        trainer.task.evaluate = watched
        summary = trainer.run()
        if summary["interrupted"]:
            raise KeyboardInterrupt
        acc = accuracy_curves(trainer.run_dir)
        return {"val_loss": summary["val_loss"], "wall_s": summary["wall_s"],
                "steps_run": summary["step"], "accuracy": acc,
                "step_train_99": first_step(acc["step"], acc["train"]),
                "step_held_out_99": first_step(acc["step"], acc["held_out"]),
                "final_train_accuracy": acc["train"][-1] if acc["train"] else None,
                "final_held_out_accuracy": acc["held_out"][-1] if acc["held_out"] else None}

    records = run_trials(trials(p, device), out_dir, log, body)
    ok = [r for r in records if r["status"] == "ok"]
    plot = plots.grokking({f"wd {r['weight_decay']:g}": r["accuracy"] for r in ok},
                          out_dir / "grokking_accuracy.png",
                          f"Grokking: a {OPS[p.op][0]} b mod {p.p}, {p.train_fraction:.0%} of the pairs "
                          f"for training",
                          TARGET)
    results = {"experiment": "grokking", "preset": preset, "config": asdict(p),
               "task": f"{data_path(p)}: predict c after 'a OP b ='; accuracy = exact answer on "
                       f"all train / all held-out equations",
               "target": TARGET, "trials": records, "plots": [plot.name]}
    results["table"] = summary_rows(results)
    return finish(out_dir, results, report(results), log)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"weight_decay": r["weight_decay"], "status": r["status"],
             "step_train_99": r.get("step_train_99"), "step_held_out_99": r.get("step_held_out_99"),
             "final_train_accuracy": r.get("final_train_accuracy"),
             "final_held_out_accuracy": r.get("final_held_out_accuracy"), "steps_run": r.get("steps_run"),
             "wall_s": r.get("trial_wall_s")} for r in results["trials"]]


def _fmt(v: Any, spec: str = "") -> str:
    return "never" if v is None else format(v, spec)


def report(results: dict[str, Any]) -> str:
    c = results["config"]
    rows = [[f"{r['weight_decay']:g}", _fmt(r["step_train_99"]), _fmt(r["step_held_out_99"]),
             _fmt(r["final_train_accuracy"], ".3f"), _fmt(r["final_held_out_accuracy"], ".3f"),
             _fmt(r["steps_run"]), _fmt(r["wall_s"], ".0f")] for r in results["table"]]
    header = ["weight decay", "step train acc >= 99%", "step held-out acc >= 99%",
              "final train acc", "final held-out acc", "steps run", "wall s"]
    return f"""# Grokking ({results['preset']} preset)

Task: {results['task']}. Decoder with {c['n_layers']} layer(s), d_model {c['d_model']},
{c['n_heads']} heads; AdamW lr {c['lr']:g}, betas (0.9, 0.98), batch {c['batch_size']}, constant
lr after {c['warmup_steps']} warmup steps; accuracy evaluated every {c['eval_every']} steps.

{table(header, rows)}

![train and held-out accuracy over steps](grokking_accuracy.png)
"""
