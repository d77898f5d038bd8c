"""The experiments' pictures, drawn with matplotlib on the non-interactive Agg back-end.

matplotlib is imported inside each function so that importing attnkit stays fast. Each
function writes one PNG and returns its path. Colours are fixed per architecture so
the Transformer and the LSTM look the same in every picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 100
COLORS = {"transformer": "tab:blue", "lstm": "tab:red"}
LABELS = {"transformer": "Transformer", "lstm": "LSTM"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_y(ax) -> None:
    """Tick labels on a log y axis as plain numbers (2.5, 3) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)


def _plain_log_x(ax) -> None:
    """Tick labels on a log-2 x axis as plain numbers (64, 128) rather than powers of two."""
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def scaling(points: dict[str, tuple[Sequence[float], Sequence[float]]], fits: dict[str, Any],
            path: Path, xlabel: str, title: str, x_per_n: float = 1.0) -> Path:
    """Loss against parameters (or compute, ``x = x_per_n * N``) on log-log axes, one
    colour per architecture, each with its fitted ``a * N^-alpha + c`` as a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for arch, (xs, ys) in points.items():
        color = COLORS.get(arch)
        ax.scatter(xs, ys, color=color, zorder=3, label=f"{LABELS.get(arch, arch)} (trials)")
        fit = fits.get(arch)
        if fit is not None and len(xs):
            n = np.geomspace(min(xs) / 1.5, max(xs) * 1.5, 200) / x_per_n
            ax.plot(n * x_per_n, fit(n), color=color, lw=1.5,
                    label=f"fit: {fit.a:.3g}·N^(-{fit.alpha:.3f}) + {fit.c:.3f}  (R²={fit.r2:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_y(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss (nats/token, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_vs_gap(series: dict[str, tuple[Sequence[int], Sequence[float]]], chance: float,
                    path: Path, title: str) -> Path:
    """Recall accuracy against the gap d (log2 axis), one line per architecture."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, (gaps, acc) in series.items():
        arch = label.split()[0].lower()
        ax.plot(gaps, acc, marker="o", color=COLORS.get(arch), label=label)
    ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance ({chance:.3f})")
    ax.set_xscale("log", base=2)
    _plain_log_x(ax)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("gap d: positions between the key and the query (log scale)")
    ax.set_ylabel("recall accuracy")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def timing(series: dict[str, tuple[Sequence[int], Sequence[float], Sequence[float]]],
           path: Path, title: str) -> Path:
    """Two panels against sequence length T: seconds per training step, and tokens/s."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for arch, (lengths, step_s, tok_s) in series.items():
        kw = dict(marker="o", color=COLORS.get(arch), label=LABELS.get(arch, arch))
        left.plot(lengths, np.asarray(step_s) * 1000, **kw)
        right.plot(lengths, tok_s, **kw)
    left.set_yscale("log")
    left.set_ylabel("time per training step (ms, log scale)")
    right.set_yscale("log")
    right.set_ylabel("training throughput (tokens/s, log scale)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        _plain_log_x(ax)
        _plain_log_y(ax)
        ax.set_xlabel("sequence length T (log scale; tokens per step fixed)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def stability(groups: dict[str, tuple[Sequence[float], Sequence[float | None]]], ceiling: float,
              path: Path, title: str) -> Path:
    """Final validation loss against the learning rate (log axis), one line per setting;
    a diverged trial is an ``x`` drawn at the top of the axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    top = ceiling * 1.08
    styles = {"pre": "-", "post": "--"}
    for i, (label, (lrs, losses)) in enumerate(groups.items()):
        color = f"C{i}"
        ok = [(lr, v) for lr, v in zip(lrs, losses) if v is not None]
        bad = [lr for lr, v in zip(lrs, losses) if v is None]
        ls = styles.get(label.split("-")[0], "-")
        if ok:
            ax.plot(*zip(*ok), marker="o", ls=ls, color=color, label=label)
        if bad:
            ax.scatter(bad, [top] * len(bad), marker="x", s=80, color=color,
                       label=None if ok else f"{label} (diverged)")
    ax.axhline(ceiling, color="gray", ls=":", lw=1, label="unigram baseline (no learning)")
    if any(v is None for _, losses in groups.values() for v in losses):
        ax.text(0.01, top, "diverged", transform=ax.get_yaxis_transform(), fontsize=8,
                va="bottom", color="gray")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (log scale)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def curves(panels: dict[str, dict[str, Sequence[Sequence[float]]]], path: Path, title: str) -> Path:
    """One panel per comparison: validation loss against step, one line per variant."""
    plt = _plt()
    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        for label, points in lines.items():
            if points:
                steps, losses = zip(*points)
                ax.plot(steps, losses, marker=".", label=label)
        ax.set_yscale("log")
        _plain_log_y(ax)
        ax.set_xlabel("training step")
        ax.set_ylabel("validation loss (nats/token, log scale)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def accuracy_and_time(rows: Sequence[tuple[str, float, float]], chance: float, path: Path,
                      title: str) -> Path:
    """Two panels of horizontal bars, one bar per model ``(name, accuracy, seconds)``: test
    accuracy (chance marked) and training time (log scale), each bar labelled with its value.
    A model whose name starts with "ViT" is drawn in the Transformer's colour."""
    plt = _plt()
    names = [name for name, _, _ in rows]
    others = iter(["tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"])
    colors = [COLORS["transformer"] if n.startswith("ViT") else next(others, "tab:gray")
              for n in names]
    y = np.arange(len(rows))[::-1]  # the first row on top
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.65 * len(rows) + 2.2), sharey=True)
    accuracy = [a for _, a, _ in rows]
    left.barh(y, accuracy, color=colors)
    for yi, a in zip(y, accuracy):
        inside = a > 0.3  # a short bar has no room for its label
        left.text(a - 0.015 if inside else a + 0.015, yi, f"{a:.3f}", va="center",
                  ha="right" if inside else "left", color="white" if inside else "black",
                  fontsize=10, fontweight="bold")
    left.axvline(chance, color="gray", ls="--", lw=1)
    left.text(chance, 1.01, f"chance {chance:.2f}", transform=left.get_xaxis_transform(),
              ha="center", va="bottom", fontsize=8, color="gray")
    left.set_xlim(0, 1)
    left.set_xlabel("test accuracy")
    seconds = [max(s, 1e-4) for _, _, s in rows]
    right.barh(y, seconds, color=colors)
    right.set_xscale("log")
    _plain_log_x(right)
    right.set_xlim(min(seconds) / 3, max(seconds) * 8)  # room for the labels right of the bars
    for yi, s in zip(y, seconds):
        right.text(s * 1.15, yi, f"{s:.3g} s", va="center", ha="left", fontsize=10)
    right.set_xlabel("training time (s, log scale)")
    left.set_yticks(y, names)
    left.tick_params(axis="y", labelsize=10)
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle(title)
    return _save(fig, path)


def grokking(series: dict[str, dict[str, Sequence[float]]], path: Path, title: str,
             target: float) -> Path:
    """Train (dashed) and held-out (solid) accuracy against steps on a log axis, one colour per
    trial; ``series[label]`` holds ``step``, ``train`` and ``held_out`` lists. A dot (and the
    legend) marks where held-out accuracy first reaches ``target``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, acc) in enumerate(series.items()):
        color = colors[i % len(colors)]
        steps = acc["step"]
        ax.plot(steps, acc["train"], color=color, ls="--", lw=1.3, label=f"{label}: train")
        hit = next(((s, v) for s, v in zip(steps, acc["held_out"]) if v >= target), None)
        when = f" ({target:.0%} at step {hit[0]:g})" if hit else f" (never {target:.0%})"
        ax.plot(steps, acc["held_out"], color=color, lw=2, label=f"{label}: held-out{when}")
        if hit:
            ax.plot(*hit, "o", color=color, ms=7, mec="black", mew=0.8)
    ax.set_xscale("log")
    _plain_log_x(ax)
    ax.set_ylim(-0.02, 1.04)
    ax.set_xlabel("optimizer step (log scale)")
    ax.set_ylabel("accuracy (exact answer)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.axhline(target, color="gray", ls=":", lw=1, label=f"{target:.0%} (dot: first held-out step there)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
