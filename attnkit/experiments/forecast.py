"""``attnkit experiment forecast``: time series as tokens (Chronos) against classical baselines.

One decoder is trained on the ``series-synth`` recipe (seeded KernelSynth-like series plus
the training part of co2, elnino and sunspots). Each of statsmodels' bundled series then has
its last ``H`` points held out (:data:`attnkit.data.series.REAL`; nile is never trained on) and
is forecast by three methods:

- **attnkit**: the median (point) and quantiles of ``samples`` sampled paths;
- **seasonal naive**: the last season repeated (the last value where there is no season);
- **ETS**: statsmodels' ``ETSModel`` (additive error; additive trend for co2; additive
  seasonality with the series' period where it has one), quantiles from 500 simulated paths.

Scores (Chronos section 5.2): MASE, the mean absolute error of the point forecast over that
of the in-sample seasonal naive forecast; WQL, the weighted quantile loss averaged over the
quantiles 0.1, ..., 0.9 (the seasonal naive forecast puts every quantile at its point).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attnkit.experiments.common import Log, Trial, finish, run_trials, start_experiment, table

RECIPE = "series-synth"
LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 10))
TREND = {"co2": "add"}  # the only series here with a clear trend


@dataclass(frozen=True)
class Preset:
    steps: int | None  # None: the recipe's
    samples: int
    tiny: bool = False


PRESETS: dict[str, Preset] = {
    "micro": Preset(steps=4, samples=8, tiny=True),
    "quick": Preset(steps=None, samples=100),
    "full": Preset(steps=6000, samples=200),
}


def trial_config(preset: Preset, device: str) -> dict[str, Any]:
    from attnkit.config import TrainConfig, load_recipe

    cfg = load_recipe(RECIPE)
    train, model = dict(cfg.get("train") or {}), dict(cfg.get("model") or {})
    if preset.steps is not None:
        train["steps"] = preset.steps
    steps = train.get("steps", TrainConfig.steps)
    for key in ("eval_every", "checkpoint_every"):
        train[key] = min(train.get(key, steps), steps)
    train.update(samples=0, device=device)
    if preset.tiny:
        model.update(d_model=16, n_layers=1, n_heads=2)
        train["batch_size"] = 4
    return {**cfg, "model": model, "train": train}


def mase(truth: np.ndarray, point: np.ndarray, history: np.ndarray, season: int) -> float:
    scale = np.mean(np.abs(history[season:] - history[:-season]))
    return float(np.mean(np.abs(truth - point)) / scale)


def wql(truth: np.ndarray, qs: np.ndarray, levels: tuple[float, ...] = LEVELS) -> float:
    """Mean over levels of 2 * sum(pinball loss) / sum(|truth|); ``qs`` is (len(levels), H)."""
    total = 0.0
    for q, pred in zip(levels, qs):
        diff = truth - pred
        total += 2 * np.sum(np.maximum(q * diff, (q - 1) * diff)) / np.sum(np.abs(truth))
    return float(total / len(levels))


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    last = history[-season:]
    return np.resize(last, horizon)


def ets(history: np.ndarray, horizon: int, season: int, trend: str | None, seed: int = 0
        ) -> np.ndarray:
    """(len(LEVELS), H) quantiles of 500 simulated ETS paths; row 4 is the median."""
    import warnings

    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    seasonal = "add" if season > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ETSModel(history, error="add", trend=trend, damped_trend=trend is not None,
                       seasonal=seasonal, seasonal_periods=season if seasonal else None
                       ).fit(disp=False)
        sims = fit.simulate(horizon, repetitions=500, anchor="end",
                            rng=np.random.default_rng(seed))
    return np.quantile(np.asarray(sims).T, LEVELS, axis=0)


def run(out_dir: Path, preset: str = "quick", log: Log = print, device: str = "cpu") -> dict:
    from attnkit.data.series import REAL, load_real
    from attnkit.generate.series import forecast_paths, load_series_run
    from attnkit.train.task_series import check_horizon
    from attnkit.viz.plots import fan_chart

    p = PRESETS[preset]
    out_dir = Path(out_dir)
    start_experiment(out_dir, "forecast", preset)
    trial = Trial(RECIPE, f"{RECIPE} ({preset})", trial_config(p, device))
    run_trials([trial], out_dir, log)
    srun = load_series_run(out_dir / "trials" / RECIPE, "cpu")
    rows, results, plots_ = [], {}, []
    for name, spec in REAL.items():
        values = load_real(name)
        history, truth = values[:-spec.horizon], values[-spec.horizon:]
        m = spec.season
        context = check_horizon(spec.horizon, srun.config.model.context_length + 1)
        paths = forecast_paths(srun.model, srun.tokenizer, history[-context:], spec.horizon,
                               p.samples, seed=0)
        ours = np.quantile(paths, LEVELS, axis=0)
        naive = np.tile(seasonal_naive(history, spec.horizon, m), (len(LEVELS), 1))
        theirs = ets(history, spec.horizon, m, TREND.get(name))
        scores = {}
        for method, qs in (("attnkit", ours), ("seasonal naive", naive), ("ETS", theirs)):
            scores[method] = {"mase": mase(truth, qs[4], history, m), "wql": wql(truth, qs)}
            rows.append([name, method, f"{scores[method]['mase']:.3f}", f"{scores[method]['wql']:.4f}"])
        results[name] = scores
        png = fan_chart(history[-150:], ours[0], ours[4], ours[8], out_dir / f"fan-{name}.png",
                        f"{name}: attnkit median, 10-90%, held-out truth dashed", truth=truth)
        plots_.append(png.name)
    header = ["series", "method", "MASE", "WQL"]
    text = table(header, rows)
    log(text)
    wins = [n for n, s in results.items()
            if s["ETS"]["mase"] < s["attnkit"]["mase"] and s["ETS"]["wql"] < s["attnkit"]["wql"]]
    report = (f"# Time series as tokens ({preset})\n\n"
              f"{RECIPE} trained for {trial.config['train'].get('steps')} steps; "
              f"{p.samples} sampled paths per series; lower is better.\n\n{text}\n\n"
              f"ETS beats attnkit on both scores for: {', '.join(wins) or 'none'}.\n")
    return finish(out_dir, {"preset": preset, "scores": results, "ets_wins": wins,
                            "plots": plots_}, report, log)
