"""Pictures for ``attnkit inspect``, drawn with matplotlib on the non-interactive Agg
back-end. matplotlib is imported inside each function so that importing attnkit stays fast;
each function writes one PNG and returns its path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

LABEL_LIMIT = 48  # longest sequence drawn with a token label on every tick
DPI = 80


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:  # a figure with a layout engine of its own (constrained) keeps it
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def attention_heatmap(weights, tokens: Sequence[str], path: Path, title: str,
                      keys: Sequence[str] | None = None, xlabel: str = "key (attended to)",
                      ylabel: str = "query (attending)") -> Path:
    """One head's attention (T, S): queries down, keys across, darker = more weight. ``keys``
    label the columns when they are not the queries' tokens (cross-attention)."""
    plt = _plt()
    keys = tokens if keys is None else keys
    n, m = len(tokens), len(keys)
    side = min(12.0, max(4.0, 0.28 * max(n, m) + 2.0))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if max(n, m) <= LABEL_LIMIT:
        short = max(len(t) for t in keys) <= 2  # single characters read best upright
        ax.set_xticks(range(m), keys, rotation=0 if short else 90, fontsize=10)
        ax.set_yticks(range(n), tokens, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def entropy_grid(entropy, path: Path, max_entropy: float) -> Path:
    """Mean attention entropy per layer (rows) and head (columns), with the values written in."""
    plt = _plt()
    n_layers, n_heads = entropy.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * n_heads + 2.5), max(3.0, 0.6 * n_layers + 1.8)))
    im = ax.imshow(entropy, cmap="magma", vmin=0.0, vmax=max(max_entropy, 1e-6), aspect="auto")
    fig.colorbar(im, ax=ax, label="nats")
    for i in range(n_layers):
        for j in range(n_heads):
            v = float(entropy[i, j])
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if v < 0.6 * max_entropy else "black")
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)])
    ax.set_yticks(range(n_layers), [str(layer) for layer in range(n_layers)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"attention entropy (max log T = {max_entropy:.2f})")
    return _save(fig, path)


def _bar_tokens(dists: list[dict]) -> tuple[list[int], list[str]]:
    """The ids and labels drawn: the top tokens of the temperature closest to 1, then up to 5
    tokens that are only in another temperature's top list."""
    ref = min(dists, key=lambda d: abs(d["temperature"] - 1.0))
    order = [e["id"] for e in ref["top"]]
    labels = [e["token"] for e in ref["top"]]
    for d in dists:
        for e in d["top"]:
            if e["id"] not in order and len(order) < len(ref["top"]) + 5:
                order.append(e["id"])
                labels.append(e["token"])
    return order, labels


def _temperature_bars(ax, dists: list[dict]) -> None:
    """Grouped bars on ``ax``, one bar per temperature for each of :func:`_bar_tokens`."""
    order, labels = _bar_tokens(dists)
    n, m = len(order), len(dists)
    width = 0.8 / m
    for k, d in enumerate(dists):
        probs = {e["id"]: e["prob"] for e in d["top"]}
        xs = [i + (k - (m - 1) / 2) * width for i in range(n)]
        ax.bar(xs, [probs.get(i, 0.0) for i in order], width, label=f"T = {d['temperature']:g}")
    ax.set_xticks(range(n), labels, fontsize=9)
    ax.set_ylabel("probability")
    top = max(e["prob"] for d in dists for e in d["top"])
    ax.set_ylim(0, min(1.0, 1.15 * top))
    ax.legend()


def _bars_width(dists: list[dict]) -> float:
    return max(6.0, 0.55 * len(_bar_tokens(dists)[0]) + 2.0)


def next_token_bars(dists: list[dict], path: Path, prompt_label: str) -> Path:
    """The top tokens of the first listed temperature closest to 1, as grouped bars with one
    bar per temperature: low temperatures sharpen the distribution, high ones flatten it."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(_bars_width(dists), 4.0))
    _temperature_bars(ax, dists)
    ax.set_title(f"next token after {prompt_label}: softmax(logits / T)")
    return _save(fig, path)


def masked_token_bars(masks: list[dict], path: Path) -> Path:
    """One panel per masked position (``masks``: dicts with ``title`` and ``distributions``,
    the per-temperature lists of :func:`attnkit.viz.inspect.next_token`), drawn as
    :func:`next_token_bars` draws the next token, the legend beside the bars."""
    plt = _plt()
    width = max(max(_bars_width(m["distributions"]), 0.085 * len(m["title"]) + 1.0)
                for m in masks) + 1.2  # + the legend
    fig, axes = plt.subplots(len(masks), 1, figsize=(width, 0.4 + 3.4 * len(masks)),
                             squeeze=False)
    for ax, m in zip(axes[:, 0], masks):
        _temperature_bars(ax, m["distributions"])
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
        ax.set_title(m["title"], fontsize=10)
    fig.suptitle("masked-LM prediction at each [MASK]: softmax(logits / T)")
    return _save(fig, path)


def pca_scatter(coords, labels: Sequence[str], explained, path: Path, label_limit: int = 300
                ) -> Path:
    """Token embeddings on their first two principal axes, each point labelled with its token
    when the vocabulary has at most ``label_limit`` tokens."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 7.0))
    xs, ys = coords[:, 0].tolist(), coords[:, 1].tolist()
    ax.scatter(xs, ys, s=8, alpha=0.5)
    if len(labels) <= label_limit:
        for x, y, text in zip(xs, ys, labels):
            ax.annotate(text, (x, y), fontsize=9, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"PC 1 ({100 * float(explained[0]):.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * float(explained[1]):.1f}% of variance)")
    ax.set_title(f"token embeddings, PCA ({len(labels)} tokens)")
    return _save(fig, path)


def class_probabilities(image, probs: Sequence[float], labels: Sequence[str], path: Path,
                        title: str, true: int | None = None, limit: int = 30) -> Path:
    """The image the model read (``image``: (H, W) or (H, W, 3) in [0, 1]) beside a bar for
    every class probability (the ``limit`` most likely when there are more classes), the
    predicted class in colour and the true one, when known, marked."""
    plt = _plt()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])[:limit]
    if true is not None and true not in order:
        order[-1] = true
    order.sort()  # classes in their own order, so two pictures of one run line up
    predicted = max(range(len(probs)), key=lambda i: probs[i])
    height = max(3.6, 0.32 * len(order) + 1.4)
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(3.6 + 5.2, height),
                                         gridspec_kw={"width_ratios": [3.0, 4.6]})
    ax_img.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    ax_img.set_title(title, fontsize=11,
                     color="black" if true is None or true == predicted else "tab:red")
    ys = list(range(len(order)))
    colours = ["tab:blue" if i == predicted else "0.7" for i in order]
    ax_bar.barh(ys, [probs[i] for i in order], color=colours)
    names = [f"{labels[i]} (true)" if i == true else labels[i] for i in order]
    ax_bar.set_yticks(ys, names, fontsize=10)
    for tick, i in zip(ax_bar.get_yticklabels(), order):
        if i == true:
            tick.set_fontweight("bold")
    for y, i in zip(ys, order):
        ax_bar.text(min(probs[i], 0.82) + 0.01, y, f"{probs[i]:.3f}", va="center", fontsize=9)
    ax_bar.invert_yaxis()  # the first class on top
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xlabel("probability (softmax of the logits)")
    shown = "" if len(order) == len(probs) else f" (the {len(order)} most likely of {len(probs)})"
    ax_bar.set_title(f"class probabilities{shown}", fontsize=11)
    return _save(fig, path)


def rollout_panels(image, heat, titles: Sequence[str], path: Path, title: str, patch: int,
                   colour_label: str, vmax: float = 0.0) -> Path:
    """The image, then one panel per map of ``heat`` (K, H, W) over it, all in one colour scale
    from 0 to the largest value or ``vmax`` if that is more (one colour bar). A grey image is
    drawn as a contour over the opaque map, so the colours read exactly as the colour bar
    says; a colour image is blended with the map instead."""
    plt = _plt()
    n = len(titles) + 1
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols + 1.2, 2.6 * rows + 0.8),
                             squeeze=False, layout="constrained")
    grey = image.ndim == 2
    size = image.shape[0]
    vmax = max(float(heat.max()), vmax, 1e-6)
    im = None
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.set_axis_off()
            continue
        if k == 0:
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title("input", fontsize=10)
            continue
        if not grey:
            ax.imshow(image, interpolation="nearest")
        im = ax.imshow(heat[k - 1], cmap="inferno", vmin=0.0, vmax=vmax,
                       alpha=1.0 if grey else 0.55, interpolation="nearest")
        if grey:  # the strokes' outline: half way between background and ink
            ax.contour(image, levels=[0.5], colors="#00e5ff", linewidths=1.4)
        for edge in range(patch, size, patch):  # the patch boundaries
            ax.axhline(edge - 0.5, color="white", lw=0.4, alpha=0.3)
            ax.axvline(edge - 0.5, color="white", lw=0.4, alpha=0.3)
        ax.set_title(titles[k - 1], fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), label=colour_label, shrink=0.9)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path, tight=False)


def fan_chart(history, q10, q50, q90, path: Path, title: str, truth=None) -> Path:
    """History, the median forecast and its 10-90% band (a time-series forecast); ``truth``
    (the held-out values) is drawn when given."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    n = len(history)
    future = np.arange(n, n + len(q50))
    ax.plot(np.arange(n), history, color="black", lw=1, label="history")
    ax.fill_between(future, q10, q90, color="tab:blue", alpha=0.3, label="10-90%")
    ax.plot(future, q50, color="tab:blue", lw=1.5, label="median")
    if truth is not None:
        ax.plot(future[:len(truth)], truth, color="tab:red", lw=1, ls="--", label="held out")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)
