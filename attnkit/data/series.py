"""Time series as tokens (Chronos, Ansari et al. 2024, arXiv:2403.07815).

A context is divided by its mean absolute value (mean scaling, Chronos section 3.1), then
each value is put into one of ``n_bins`` uniform bins over ``[low, high]``; ids 0 and 1 are
pad and eos, the bins are ids ``2 .. n_bins + 1``. Decoding maps a bin id to its centre times
the scale, so a value inside the range comes back within half a bin width (times the scale).

Series come from CSV columns, ``.npy`` files, statsmodels' bundled datasets
(``statsmodels:co2`` ...) and a seeded KernelSynth-like generator (``kernelsynth``): sums of
seasonal, trend and noise components (Chronos section 4.2 draws Gaussian-process kernels;
here the components are drawn directly, which keeps the generator dependency-free).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnkit.errors import AttnkitError

PAD_ID, EOS_ID = 0, 1
N_SPECIAL = 2


@dataclass
class SeriesTokenizer:
    """Mean scaling plus uniform binning. ``vocab_size = n_bins + 2``."""

    n_bins: int = 4094
    low: float = -15.0
    high: float = 15.0
    kind: str = "series"

    def __post_init__(self) -> None:
        if self.n_bins < 2:
            raise AttnkitError(f"data.bins must be at least 2, got {self.n_bins}")
        if not self.low < self.high:
            raise AttnkitError(f"the series bin range must have low < high, got [{self.low}, "
                               f"{self.high}]")

    @property
    def vocab_size(self) -> int:
        return self.n_bins + N_SPECIAL

    @property
    def width(self) -> float:
        return (self.high - self.low) / self.n_bins

    def centres(self) -> torch.Tensor:
        """(n_bins,) the value each bin decodes to, before scaling."""
        return self.low + self.width * (torch.arange(self.n_bins, dtype=torch.float64) + 0.5)

    @staticmethod
    def scale(context: torch.Tensor) -> torch.Tensor:
        """(..., T) -> (..., 1): mean |x| over the last axis; 1 where that is 0 (Chronos)."""
        s = context.abs().mean(dim=-1, keepdim=True)
        return torch.where(s > 0, s, torch.ones_like(s))

    def encode(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """(..., T) values and a (..., 1) scale -> (..., T) long ids in ``2 .. n_bins + 1``;
        values outside the range go to the end bins."""
        z = (values / scale - self.low) / self.width
        return torch.floor(z).clamp(0, self.n_bins - 1).long() + N_SPECIAL

    def decode(self, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """(..., T) ids -> (..., T) values: bin centres times ``scale``; specials decode to NaN."""
        centres = self.centres().to(scale.dtype)
        idx = (ids - N_SPECIAL).clamp(0, self.n_bins - 1)
        out = centres[idx] * scale
        return out.masked_fill(ids < N_SPECIAL, float("nan"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"kind": "series", "n_bins": self.n_bins,
                                          "low": self.low, "high": self.high}) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> SeriesTokenizer:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise AttnkitError(f"cannot read the series tokenizer {path} (is this a data.task=series "
                               f"run? retrain it with `attnkit train series-synth`)") from None
        if not isinstance(data, dict) or data.get("kind") != "series":
            raise AttnkitError(f"{path} is not a series tokenizer (attnkit forecast needs a "
                               f"data.task=series run)")
        return cls(int(data["n_bins"]), float(data["low"]), float(data["high"]))


# --- series sources ------------------------------------------------------------------------

@dataclass(frozen=True)
class RealSeries:
    """A statsmodels dataset as one series: its seasonal period and the horizon held out."""

    season: int
    horizon: int


#: The bundled statsmodels datasets used as real, held-out data (all load offline).
REAL: dict[str, RealSeries] = {
    "co2": RealSeries(season=12, horizon=24),  # weekly, resampled to monthly means
    "elnino": RealSeries(season=12, horizon=24),  # monthly sea surface temperature
    "sunspots": RealSeries(season=11, horizon=11),  # yearly; the ~11-year cycle
    "nile": RealSeries(season=1, horizon=10),  # yearly, no season
}


def _statsmodels():
    try:
        import statsmodels.api as sm
    except ImportError:
        raise AttnkitError("statsmodels is not installed (pip install statsmodels)") from None
    return sm


def load_real(name: str) -> np.ndarray:
    """The statsmodels dataset ``name`` as a float64 series (NaNs in co2 interpolated by
    taking monthly means, which statsmodels' own examples do)."""
    if name not in REAL:
        raise AttnkitError(f"unknown real series 'statsmodels:{name}' (choose from "
                           f"{', '.join(REAL)})")
    sm = _statsmodels()
    data = getattr(sm.datasets, name).load_pandas().data
    if name == "co2":
        monthly = data["co2"].resample("MS").mean()
        values = monthly.interpolate().to_numpy()
    elif name == "elnino":
        values = data.drop(columns=["YEAR"]).to_numpy().reshape(-1)
    elif name == "sunspots":
        values = data["SUNACTIVITY"].to_numpy()
    else:
        values = data["volume"].to_numpy()
    return np.asarray(values, dtype=np.float64)


def kernelsynth(n_series: int, length: int, seed: int) -> list[np.ndarray]:
    """``n_series`` synthetic series, each a sum of 1-3 seasonal components (periods drawn
    from common calendars), an optional linear or damped trend, a level and Gaussian or
    random-walk noise. The same ``seed`` gives the same series."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    periods = np.array([4, 7, 11, 12, 24, 52, 365 / 12 * 3])
    out = []
    for _ in range(n_series):
        y = np.full(length, rng.normal(0, 5))
        for p in rng.choice(periods, size=rng.integers(1, 4), replace=False):
            amp = rng.lognormal(0, 0.7)
            shape = np.sin(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi))
            y += amp * (np.sign(shape) * np.abs(shape) ** rng.uniform(0.5, 2))
        trend = rng.choice(["none", "linear", "damped"])
        if trend == "linear":
            y += rng.normal(0, 0.02) * t
        elif trend == "damped":
            y += rng.normal(0, 3) * (1 - np.exp(-t / rng.uniform(20, 400)))
        noise = rng.choice(["white", "walk"], p=[0.7, 0.3])
        sigma = rng.lognormal(-2, 0.8)
        eps = rng.normal(0, sigma, length)
        y += np.cumsum(eps) * 0.2 if noise == "walk" else eps
        out.append(y)
    return out


def fill_nans(values: np.ndarray, where: str, nan: str) -> np.ndarray:
    """Refuse NaNs (``nan=refuse``) or fill them by linear interpolation (``nan=interpolate``,
    the ends held at the nearest value)."""
    bad = np.isnan(values)
    if not bad.any():
        return values
    if nan != "interpolate":
        first = int(np.flatnonzero(bad)[0])
        raise AttnkitError(f"{where} has {int(bad.sum())} missing values (first at index {first}); "
                           f"fill them or add --data.nan=interpolate (forecast: --nan interpolate)")
    if bad.all():
        raise AttnkitError(f"{where} has no values, only NaNs (use another column or file)")
    idx = np.arange(len(values))
    out = values.copy()
    out[bad] = np.interp(idx[bad], idx[~bad], values[~bad])
    return out


def check_series(values: np.ndarray, where: str, min_length: int = 2) -> np.ndarray:
    if len(values) < min_length:
        raise AttnkitError(f"{where} has {len(values)} values, fewer than the {min_length} needed "
                           f"(use a longer series or a shorter --horizon / model.context_length)")
    if np.nanmax(values) == np.nanmin(values):
        raise AttnkitError(f"{where} is constant ({values[0]:g} throughout); a constant series has "
                           f"nothing to forecast (choose another column)")
    return values


def read_csv(path: Path, column: str | None, nan: str = "refuse") -> dict[str, np.ndarray]:
    """The named column of a CSV file with a header row, or every numeric column. Empty cells
    and NA/NaN are missing values; any other non-number is an error naming file, row, column."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise AttnkitError(f"cannot read {path}: {e} (point --data at a UTF-8 CSV file)") from None
    if len(rows) < 2:
        raise AttnkitError(f"{path} needs a header row and at least one row of values")
    header, body = rows[0], rows[1:]
    missing = {"", "na", "nan", "null"}

    def parse(j: int, strict: bool) -> np.ndarray | None:
        out = []
        for i, row in enumerate(body, start=2):
            cell = row[j].strip() if j < len(row) else ""
            if cell.lower() in missing:
                out.append(math.nan)
                continue
            try:
                out.append(float(cell))
            except ValueError:
                if not strict and all(math.isnan(v) for v in out):  # a date or label column
                    return None
                raise AttnkitError(f"{path} row {i}, column '{header[j]}': {cell!r} is not a "
                                   f"number (fix the cell, or choose another column)") from None
        return np.asarray(out, dtype=np.float64)

    if column is not None:
        if column not in header:
            raise AttnkitError(f"{path} has no column '{column}' (columns: {', '.join(header)})")
        names = [column]
    else:
        names = header
    result = {}
    for name in names:
        j = header.index(name)
        values = parse(j, strict=column is not None)
        if values is None or np.isnan(values).all():  # a date or label column: skipped
            continue
        where = f"{path} column '{name}'"
        result[name] = check_series(fill_nans(values, where, nan), where)
    if not result:
        raise AttnkitError(f"{path} has no numeric column (name one with data.column or --data-column)")
    return result


def read_series(spec: str, column: str | None = None, nan: str = "refuse") -> dict[str, np.ndarray]:
    """``spec`` -> {name: series}: ``statsmodels:NAME``, a ``.csv`` or a ``.npy`` file (1-D, or
    2-D with one series per column)."""
    if spec.startswith("statsmodels:"):
        name = spec.split(":", 1)[1]
        return {name: load_real(name)}
    if spec in REAL:
        return {spec: load_real(spec)}
    path = Path(spec)
    if not path.is_file():
        raise AttnkitError(f"series not found: {spec} (a .csv or .npy file, statsmodels:NAME with "
                           f"NAME in {', '.join(REAL)}, or kernelsynth)")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise AttnkitError(f"cannot read {path} as a .npy array: {e}") from None
        if not np.issubdtype(arr.dtype, np.number) or arr.ndim not in (1, 2):
            raise AttnkitError(f"{path} must hold a 1-D or 2-D numeric array, got {arr.dtype} "
                               f"with shape {arr.shape}")
        cols = [arr] if arr.ndim == 1 else [arr[:, j] for j in range(arr.shape[1])]
        out = {}
        for j, col in enumerate(cols):
            where = f"{path} column {j}"
            out[f"{path.stem}" if arr.ndim == 1 else f"{path.stem}[{j}]"] = check_series(
                fill_nans(col.astype(np.float64), where, nan), where)
        return out
    return read_csv(path, column, nan)


def training_series(spec: str, column: str | None, nan: str, horizon: int, seed: int,
                    ) -> list[np.ndarray]:
    """The training sources of ``data.path`` (comma-separated): ``kernelsynth`` (seeded
    synthetic series) and real series, whose last ``horizon`` points are held out."""
    out: list[np.ndarray] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part == "kernelsynth" or part.startswith("kernelsynth:"):
            n = int(part.split(":", 1)[1]) if ":" in part else 256
            out += kernelsynth(n, 512, seed)
            continue
        for values in read_series(part, column, nan).values():
            held = REAL[part.split(":")[-1]].horizon if part.split(":")[-1] in REAL else horizon
            out.append(values[:-held])
    return out


def window_batch(series: list[np.ndarray], length: int, batch_size: int, context: int,
                 tokenizer: SeriesTokenizer, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` windows of ``length + 1`` values, drawn with ``g`` (a series uniformly,
    then a start), each scaled by the mean |x| of its first ``context`` values, as (B, T) ids
    and (B, T) next-id targets. Series shorter than the window are left-padded with pad ids,
    which the loss ignores."""
    rows = []
    picks = torch.randint(len(series), (batch_size,), generator=g).tolist()
    for k in picks:
        s = series[k]
        n = len(s) - length
        start = int(torch.randint(max(n, 1), (1,), generator=g)) if n > 0 else 0
        rows.append(torch.tensor(s[start:start + length + 1], dtype=torch.float64))
    ids = torch.full((batch_size, length + 1), PAD_ID, dtype=torch.long)
    for b, w in enumerate(rows):
        sc = SeriesTokenizer.scale(w[:context])
        ids[b, length + 1 - len(w):] = tokenizer.encode(w, sc)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[y == PAD_ID] = -100
    return x, y
