"""``attnkit experiment NAME``: the seed's claims as experiments (see docs/experiments.md)."""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from attnkit.errors import AttnkitError
from attnkit.experiments import EXPERIMENTS

DESCRIPTIONS = {
    "scaling": "a ladder of model sizes, Transformer and LSTM, same tokens; fits L(N) = a*N^-alpha + c",
    "long-range": "recall a key d positions back; accuracy vs d, Transformer vs LSTM at equal size",
    "parallelism": "time per training step and tokens/s vs sequence length, both architectures",
    "ablation": "pre-LN vs post-LN stability (learning rate, depth, warmup), RMSNorm, SwiGLU, "
                "positions",
    "vision": "ViT (vit-digits recipe) vs logistic regression, RBF SVM, small CNN on the digits: "
              "accuracy, training time, parameters",
    "forecast": "time series as tokens (Chronos) vs seasonal naive and ETS: MASE and WQL on "
                "statsmodels' series",
    "grokking": "a + b mod p: train accuracy first, held-out accuracy much later; steps to 99% "
                "held-out per weight decay",
}


def add_parser(sub) -> None:
    lines = "\n".join(f"  {name:<12} {text}" for name, text in DESCRIPTIONS.items())
    p = sub.add_parser(
        "experiment", help="reproduce a claim of the Transformer: scaling, long-range, "
                           "parallelism, ablation, vision, grokking",
        description="Train the trials of one experiment (each an ordinary run directory under "
                    "OUT/trials/), then write OUT/results.json, PNG plots and OUT/report.md. "
                    "Re-running the same command skips finished trials and resumes "
                    "interrupted ones.",
        epilog=f"experiments:\n{lines}\n\n"
               "presets: --quick (minutes on 2 CPU cores), --micro (seconds; for tests), "
               "default full (GPU scale; for vision the recipe as written, minutes on a CPU)\n\n"
               "examples:\n"
               "  attnkit experiment scaling --quick      # -> runs/experiments/scaling-quick\n"
               "  attnkit experiment ablation --quick --out runs/abl\n"
               "  attnkit experiment long-range            # full preset, on a GPU\n"
               "  attnkit experiment vision --quick        # well under a minute on a CPU\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(EXPERIMENTS)}")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="preset", const="quick",
                      help="the CPU preset: a few minutes on 2 cores")
    size.add_argument("--micro", action="store_const", dest="preset", const="micro",
                      help="a seconds-long smoke run (for tests; the numbers mean nothing)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/experiments/NAME, with "
                   "-quick or -micro appended for those presets)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run, preset="full")


def default_out(name: str, preset: str) -> Path:
    return Path("runs") / "experiments" / (name if preset == "full" else f"{name}-{preset}")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (see `attnkit experiment "
                           f"--help`)")
    if args.name not in EXPERIMENTS:
        import difflib

        close = difflib.get_close_matches(args.name, list(EXPERIMENTS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise AttnkitError(f"unknown experiment '{args.name}' ({hint}choose from "
                           f"{', '.join(EXPERIMENTS)})")
    module = importlib.import_module(EXPERIMENTS[args.name])
    out = args.out or default_out(args.name, args.preset)
    t0 = time.perf_counter()
    module.run(out, args.preset, print, device=args.device)
    print(f"done: {args.name} ({args.preset}) in {time.perf_counter() - t0:.0f}s -> "
          f"{out / 'report.md'}")
    return 0
