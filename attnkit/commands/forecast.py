"""``attnkit forecast RUN --data FILE|NAME --horizon H``: quantile forecasts from a series run."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from attnkit.errors import AttnkitError
from attnkit.generate.series import SeriesRun, load_series_run


def add_parser(sub) -> None:
    p = sub.add_parser(
        "forecast", help="forecast a time series with a data.task=series run: quantiles and a "
                         "fan chart",
        description="Sample N future paths after the end of a series (the last "
                    "context_length + 1 - H values are the context), print the 0.1/0.5/0.9 "
                    "quantiles per step and write forecast.csv, forecast.json and fan.png.",
        epilog="examples:\n"
               "  attnkit forecast runs/series-synth --data statsmodels:co2 --horizon 24\n"
               "  attnkit forecast runs/series-synth --data sales.csv --data-column units "
               "--horizon 12 --samples 100 --out fc/\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run trained with data.task=series")
    p.add_argument("--data", required=True, metavar="FILE|NAME",
                   help="a .csv or .npy file, or statsmodels:NAME (co2, elnino, sunspots, nile)")
    p.add_argument("--data-column", default=None, metavar="NAME",
                   help="the CSV column (default: the first numeric column)")
    p.add_argument("--nan", default="refuse", choices=("refuse", "interpolate"),
                   help="missing values: refuse (default) or interpolate linearly")
    p.add_argument("--horizon", type=int, default=None, metavar="H",
                   help="steps to forecast (default: the run's data.horizon)")
    p.add_argument("--samples", type=int, default=20, metavar="N", help="sampled paths (default 20)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where forecast.csv, forecast.json and fan.png go (default RUN/forecast)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps (default cpu)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def forecast(run: SeriesRun, history: np.ndarray, horizon: int, samples: int, seed: int
             ) -> dict[str, np.ndarray]:
    """Quantiles ``q10``, ``q50``, ``q90`` (each (H,)) and the (N, H) ``paths`` after
    ``history``."""
    from attnkit.generate.series import forecast_paths, quantiles
    from attnkit.train.task_series import check_horizon

    if samples < 1:
        raise AttnkitError(f"--samples must be at least 1, got {samples}")
    context = check_horizon(horizon, run.config.model.context_length + 1)
    if len(history) < 2:
        raise AttnkitError(f"the series has {len(history)} values; a forecast needs at least 2")
    paths = forecast_paths(run.model, run.tokenizer, history[-context:], horizon, samples, seed)
    q10, q50, q90 = quantiles(paths)
    return {"q10": q10, "q50": q50, "q90": q90, "paths": paths}


def write_outputs(out: Path, name: str, history: np.ndarray, fc: dict[str, np.ndarray]) -> list[Path]:
    from attnkit.viz.plots import fan_chart

    out.mkdir(parents=True, exist_ok=True)
    rows = [[i + 1, *(float(fc[q][i]) for q in ("q10", "q50", "q90"))] for i in range(len(fc["q50"]))]
    with open(out / "forecast.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["step", "q0.1", "q0.5", "q0.9"])
        w.writerows(rows)
    (out / "forecast.json").write_text(json.dumps(
        {"series": name, "horizon": len(rows), "samples": len(fc["paths"]),
         "quantiles": {q: [round(float(v), 6) for v in fc[k]]
                       for q, k in (("0.1", "q10"), ("0.5", "q50"), ("0.9", "q90"))}}) + "\n",
        encoding="utf-8")
    png = fan_chart(history[-200:], fc["q10"], fc["q50"], fc["q90"], out / "fan.png",
                    f"{name}: median and 10-90% of {len(fc['paths'])} paths")
    return [out / "forecast.csv", out / "forecast.json", png]


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from attnkit.data.series import read_series

    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (see `attnkit forecast "
                           f"--help`)")
    series = read_series(args.data, args.data_column, args.nan)
    name, history = next(iter(series.items()))
    srun = load_series_run(args.run, args.device)
    horizon = args.horizon or srun.config.data.horizon
    fc = forecast(srun, history, horizon, args.samples, args.seed)
    print(f"series {name}: {len(history)} values, forecast {horizon} steps from {args.samples} "
          f"sampled paths (seed {args.seed})")
    print(f"{'step':>4} {'q0.1':>10} {'q0.5':>10} {'q0.9':>10}")
    for i in range(horizon):
        print(f"{i + 1:>4} {fc['q10'][i]:>10.4g} {fc['q50'][i]:>10.4g} {fc['q90'][i]:>10.4g}")
    files = write_outputs(args.out or Path(args.run) / "forecast", name, history, fc)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
