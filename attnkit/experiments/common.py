"""What every experiment shares: trials as ordinary run directories, resumable.

An experiment is a list of :class:`Trial`\\ s. Each is trained by
:class:`attnkit.train.Trainer` into ``out_dir/trials/NAME/`` (so ``attnkit sample``
works on it), and its outcome is written to ``trial.json`` there. Running the same
experiment again skips every trial with a ``trial.json``, resumes a trial that has a
checkpoint but no outcome, and starts the others afresh.

A trial whose loss becomes non-finite is recorded as ``diverged`` rather than
stopping the experiment.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnkit.errors import AttnkitError
from attnkit.train.guards import TrainingDiverged

Log = Callable[[str], None]
PRESET_NAMES = ("micro", "quick", "full")


@dataclass
class Trial:
    """One training run of an experiment.

    ``config`` is a nested config dict (``model``/``train``/``data`` sections) as a
    recipe would hold it; ``meta`` is copied into the trial's record (family, lr, ...).
    """

    name: str  # the run directory's name under trials/
    label: str  # what the progress line says
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)


#: ``body(trainer, trial) -> dict``: trains (or times) the model; the dict joins the record.
Body = Callable[[Any, Trial], dict[str, Any]]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    from attnkit.runs import write_json as atomic

    atomic(path, obj)


def start_experiment(out_dir: Path, name: str, preset: str) -> None:
    """Create ``out_dir`` or check that it holds the same experiment and preset."""
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / "experiment.json"
    if marker.exists():
        have = read_json(marker)
        if (have.get("experiment"), have.get("preset")) != (name, preset):
            raise AttnkitError(f"{out_dir} holds the {have.get('preset')} preset of "
                               f"'{have.get('experiment')}' (choose another --out to run the "
                               f"{preset} preset of '{name}')")
    else:
        write_json(marker, {"experiment": name, "preset": preset})


def curves(run_dir: Path) -> dict[str, list[list[float]]]:
    """``{"train": [[step, loss], ...], "val": [[step, val_loss], ...]}`` from metrics.jsonl."""
    out: dict[str, list[list[float]]] = {"train": [], "val": []}
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if rec.get("loss") is not None:  # a skipped non-finite step logs loss null
            out["train"].append([rec["step"], rec["loss"]])
        if "val_loss" in rec:
            out["val"].append([rec["step"], rec["val_loss"]])
    return out


def count_params(model) -> dict[str, int]:
    """Total and non-embedding parameters (token embedding, output layer and learned
    position table excluded, as in Kaplan et al. 2020), each shared tensor once."""
    seen: set[int] = set()
    total = embedding = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if name.split(".")[0] in ("tok_emb", "lm_head", "pos_emb"):
            embedding += p.numel()
    return {"params": total, "non_embedding_params": total - embedding}


def standard_body(trainer, trial: Trial) -> dict[str, Any]:
    """Train to ``train.steps``; the final validation loss and the curves."""
    summary = trainer.run()
    if summary["interrupted"]:
        raise KeyboardInterrupt
    if not math.isfinite(summary["val_loss"]):  # resumed at the last step: nothing was run
        summary["val_loss"] = trainer.evaluate()["val_loss"]
    return {"val_loss": summary["val_loss"], "wall_s": summary["wall_s"],
            "tokens_per_s": summary["tokens_per_s"]}


def run_trials(trials: list[Trial], out_dir: Path, log: Log, body: Body = standard_body
               ) -> list[dict[str, Any]]:
    """Run (or skip, or resume) every trial; returns their records in order."""
    from attnkit.config import config_from_dict
    from attnkit.runs import latest_checkpoint
    from attnkit.train import Trainer

    records = []
    for i, trial in enumerate(trials, start=1):
        run_dir = out_dir / "trials" / trial.name
        done = run_dir / "trial.json"
        head = f"trial {i}/{len(trials)}: {trial.label}"
        if done.exists():
            record = read_json(done)
            if record.get("spec") != trial.config:
                raise AttnkitError(f"{run_dir} was trained with another configuration (delete "
                                   f"it, or choose another --out)")
            log(f"{head} - done already ({_outcome(record)})")
            records.append(record)
            continue
        try:
            latest_checkpoint(run_dir)
            resume = True
        except AttnkitError:
            resume = False
            shutil.rmtree(run_dir, ignore_errors=True)  # a trial that never reached a checkpoint
        log(f"{head}{' (resuming)' if resume else ''}")
        cfg = config_from_dict(trial.config)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, run_dir, resume=resume, log=lambda s: log(f"  {s}"))
        record = {"name": trial.name, **trial.meta, **count_params(trainer.model)}
        try:
            record.update(status="ok", **body(trainer, trial))
        except TrainingDiverged as e:
            record.update(status="diverged", val_loss=None, error=str(e))
        record["curves"] = curves(run_dir)
        record["trial_wall_s"] = round(time.perf_counter() - t0, 1)
        record["spec"] = trial.config
        write_json(done, record)
        log(f"  -> {_outcome(record)}")
        records.append(record)
    return records


def _outcome(record: dict[str, Any]) -> str:
    if record["status"] == "diverged":
        return "diverged"
    parts = []
    if record.get("step_s") is not None:
        parts.append(f"{record['step_s'] * 1000:.1f} ms/step")
    if record.get("val_loss") is not None:
        parts.append(f"val loss {record['val_loss']:.4f}")
    if "trial_wall_s" in record:
        parts.append(f"{record['trial_wall_s']:.0f}s")
    return ", ".join(parts) or record["status"]


def fmt_int(n: float) -> str:
    """12345 -> '12.3k', 1234567 -> '1.23M'."""
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.0f}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def finish(out_dir: Path, results: dict[str, Any], report: str, log: Log) -> dict[str, Any]:
    """Write ``results.json`` and ``report.md``; log where they are."""
    write_json(out_dir / "results.json", results)
    (out_dir / "report.md").write_text(report.rstrip() + "\n", encoding="utf-8")
    log(f"wrote {out_dir / 'results.json'}, {out_dir / 'report.md'} and "
        f"{len(results.get('plots', []))} plots")
    return results


def lstm_width_for(non_embedding: int, n_layers: int) -> int:
    """The LSTM width whose ``n_layers`` layers hold about ``non_embedding`` parameters:
    each layer has 4 gates of (d x d input + d x d recurrent) weights and 2 x 4d biases."""
    d = (-8 * n_layers + math.sqrt((8 * n_layers) ** 2 + 32 * n_layers * non_embedding)) / (
        16 * n_layers)
    return max(1, round(d))
