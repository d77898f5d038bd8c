"""Vision: ``attnkit train vit-digits`` beside logistic regression, an RBF SVM and a small CNN
on the same digits split, on this machine, in one script.

Runs ``attnkit train vit-digits`` as a user would (a fresh process, so start-up and data
preparation count in its wall time; its training time - the time in its training steps, as
in ``attnkit experiment vision`` - is read from the final checkpoint's ``state.json``), then
scores the final checkpoint on the whole test split itself and checks that the run printed
the same accuracy. The baselines of ``attnkit experiment vision``
(:mod:`attnkit.experiments.vision`, its full preset) are then fitted in this process on the
same images - the recipe's data, with the same overrides - so every number comes from this
run on this machine. Results go to ``benchmarks/results/vision.json`` (or
``$ATTNKIT_BENCH_RESULTS``).

    python benchmarks/vision.py [--cnn-epochs N] [--out DIR] [SECTION.KEY=VALUE ...]
                                # e.g. train.steps=20 for a smoke run
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from reference import RESULTS

import attnkit
from attnkit.config import apply_overrides, config_from_dict, load_recipe, parse_overrides
from attnkit.data.images import load_images
from attnkit.experiments import vision
from attnkit.experiments.common import table
from attnkit.runs import latest_checkpoint

RECIPE = vision.RECIPE
ACCURACY = re.compile(r"^test accuracy ([\d.]+)% \((\d+)/(\d+)\)", re.M)


def train(out: Path, extra: list[str]) -> tuple[float, str]:
    """Run ``attnkit train`` in a fresh process on this script's attnkit; its wall time in
    seconds and what it printed."""
    cmd = [sys.executable, "-m", "attnkit", "train", RECIPE, "--out", str(out),
           "--train.samples=0", *extra]
    root = str(Path(attnkit.__file__).resolve().parent.parent)  # the same code as below
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get(
        "PYTHONPATH")]))}
    print("$ " + " ".join(["attnkit", *cmd[3:]]), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return time.perf_counter() - t0, done.stdout


@torch.inference_mode()
def score(run: Path, data) -> tuple[float, int]:
    """The checkpoint's accuracy on the whole test split, computed here, and its parameters."""
    model = attnkit.load(run, device="cpu").model
    logits, _ = model(data.val_x)
    return ((logits.argmax(-1) == data.val_y).float().mean().item(),
            sum(p.numel() for p in model.parameters()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    full = vision.PRESETS["full"]
    parser.add_argument("--cnn-epochs", type=int, default=full.cnn_epochs,
                        help=f"epochs of the CNN baseline (default {full.cnn_epochs})")
    parser.add_argument("--out", type=Path, default=None, help="where the run goes (default: temp)")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE",
                        help="config overrides for the ViT run, e.g. train.steps=20")
    args = parser.parse_args()
    extra = ["--" + o.removeprefix("--") for o in args.overrides]
    cfg = config_from_dict(apply_overrides(load_recipe(RECIPE), parse_overrides(extra)))
    data = load_images(cfg.data.path, cfg.model.image_size, cfg.data.val_fraction)
    run = (args.out or Path(tempfile.mkdtemp())) / RECIPE

    wall, printed = train(run, extra)
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    steps, train_s = state["step"], state["elapsed_s"]
    reported = ACCURACY.search(printed)
    accuracy, n_params = score(run, data)
    if reported is None:
        print("error: the run printed no test accuracy", file=sys.stderr)
        return 1
    right, total = int(reported.group(2)), int(reported.group(3))
    if (right, total) != (round(accuracy * len(data.val_y)), len(data.val_y)):
        print(f"error: the run printed {right}/{total} right but its checkpoint scores "
              f"{accuracy:.4f} on {len(data.val_y)} images", file=sys.stderr)
        return 1
    rows = [{"name": "vit", "model": "ViT", "accuracy": accuracy, "train_s": train_s,
             "process_wall_s": round(wall, 1), "steps": steps, "params": n_params,
             "params_counted": "weights and biases", "overrides": extra}]
    print(f"ViT: {wall:.1f} s wall, {train_s:.1f} s in its {steps} training steps, test "
          f"accuracy {accuracy:.4f}", flush=True)

    p = replace(full, cnn_epochs=args.cnn_epochs)
    device = torch.device("cpu")
    for name, (label, fit, settings) in vision.BASELINES.items():
        record = fit(data, p, cfg.train.seed, device)
        rows.append({"name": name, "model": label, **record, "settings": settings(p)})
        print(f"{label}: {record['train_s']:.2f} s to fit, test accuracy {record['accuracy']:.4f}",
              flush=True)

    print(table(["model", "test accuracy", "training time (s)", "parameters"],
                [[r["model"], f"{r['accuracy']:.4f}", f"{r['train_s']:.2f}", r["params"]]
                 for r in rows]))
    print(f"training time: the ViT's training steps (the whole fresh process: {wall:.1f} s); "
          f"scikit-learn's fit; the CNN's epochs; torch threads: {torch.get_num_threads()}")
    out = RESULTS / "vision.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"recipe": RECIPE, "torch": torch.__version__,
                               "threads": torch.get_num_threads(),
                               "data": {"source": data.source, "train": len(data.train_y),
                                        "test": len(data.val_y)},
                               "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
