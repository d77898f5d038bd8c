"""Fitting a saturating power law ``L(N) = a * N**(-alpha) + c`` without scipy.

Scaling-law fits (Kaplan et al., 2020; Hoffmann et al., 2022) have few points and
one awkward parameter, the irreducible loss ``c``. For a fixed ``c`` the model is a
straight line in log space, ``log(L - c) = log(a) - alpha * log(N)``, solved exactly
by least squares; so we scan ``c`` over ``[0, min(L))``, keep the best, zoom in
around it, and finish with a few damped Gauss-Newton steps on all three parameters.
Every candidate is scored by the squared error in ``log L`` (the error a log-log plot
shows), which is also the error reported as the fit's quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PowerLawFit:
    """``L(N) = a * N**(-alpha) + c``, with its quality in log space."""

    a: float
    alpha: float
    c: float
    r2: float  # 1 - SS_res / SS_tot of log L; 1 is perfect
    rmse: float  # root-mean-square error of log L (natural log)
    n_points: int

    def __call__(self, n: np.ndarray | float) -> np.ndarray:
        return self.a * np.asarray(n, dtype=float) ** (-self.alpha) + self.c

    def to_dict(self) -> dict[str, float]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _line_fit(log_n: np.ndarray, y: np.ndarray, c: float) -> tuple[float, float]:
    """(log a, alpha) of the least-squares line through ``log(y - c)`` against ``log_n``."""
    slope, intercept = np.polyfit(log_n, np.log(y - c), 1)
    return float(intercept), float(-slope)


def _sse(log_n: np.ndarray, log_y: np.ndarray, log_a: float, alpha: float, c: float) -> float:
    pred = np.exp(log_a - alpha * log_n) + c
    if np.any(pred <= 0):
        return math.inf
    return float(np.sum((np.log(pred) - log_y) ** 2))


def _scan_c(log_n, y, log_y, lo: float, hi: float, steps: int) -> tuple[float, float, float, float]:
    best = (math.inf, 0.0, 0.0, 0.0)
    for c in np.linspace(lo, hi, steps):
        log_a, alpha = _line_fit(log_n, y, c)
        err = _sse(log_n, log_y, log_a, alpha, c)
        if err < best[0]:
            best = (err, log_a, alpha, float(c))
    return best


def _gauss_newton(log_n, log_y, params: np.ndarray, c_max: float, iters: int = 50) -> np.ndarray:
    """Levenberg-Marquardt on (log a, alpha, c); keeps ``0 <= c < c_max``."""
    lam = 1e-3
    err = _sse(log_n, log_y, *params)
    for _ in range(iters):
        log_a, alpha, c = params
        power = np.exp(log_a - alpha * log_n)  # a * N^-alpha
        pred = power + c
        resid = np.log(pred) - log_y
        jac = np.stack([power / pred, -log_n * power / pred, 1.0 / pred], axis=1)
        jtj, jtr = jac.T @ jac, jac.T @ resid
        step = np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-12), -jtr)
        trial = params + step
        trial[2] = min(max(trial[2], 0.0), c_max)
        trial_err = _sse(log_n, log_y, *trial)
        if trial_err < err:
            params, err, lam = trial, trial_err, lam / 3
            if abs(step).max() < 1e-10:
                break
        else:
            lam *= 10
            if lam > 1e8:
                break
    return params


def fit_power_law(n: Sequence[float], loss: Sequence[float]) -> PowerLawFit:
    """Fit ``loss = a * n**(-alpha) + c`` (``c >= 0``) to at least three points.

    ``alpha`` comes out negative if the loss grows with ``n``; the fit is then a poor
    description, which ``r2`` and ``rmse`` make plain.
    """
    x = np.asarray(n, dtype=float)
    y = np.asarray(loss, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        raise ValueError(f"a power-law fit needs at least 3 finite points, got {len(x)}")
    log_n, log_y = np.log(x), np.log(y)
    c_max = float(y.min()) * (1 - 1e-6)
    err, log_a, alpha, c = _scan_c(log_n, y, log_y, 0.0, c_max, 200)
    width = c_max / 200
    err, log_a, alpha, c = min(
        (err, log_a, alpha, c),
        _scan_c(log_n, y, log_y, max(0.0, c - width), min(c_max, c + width), 200))
    log_a, alpha, c = _gauss_newton(log_n, log_y, np.array([log_a, alpha, c]), c_max)
    sse = _sse(log_n, log_y, log_a, alpha, c)
    sst = float(np.sum((log_y - log_y.mean()) ** 2))
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    return PowerLawFit(a=float(math.exp(log_a)), alpha=float(alpha), c=float(c), r2=float(r2),
                       rmse=float(math.sqrt(sse / len(x))), n_points=int(len(x)))
