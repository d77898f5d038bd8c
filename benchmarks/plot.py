"""Draw the benchmark pictures in docs/img/ from the JSON in benchmarks/results/.

    python benchmarks/plot.py

- ``bench_train_tokens.png``: training tokens/s against context, attnkit and
  ``transformers``, one line per model size (fp32, and bf16 from ``train-bf16.json``);
- ``bench_train_mfu.png``: MFU against model size at each context;
- ``bench_memory.png``: forward + backward memory against context, fused and eager attention.
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "img"
PARAMS = {"tiny": 3.32e6, "gpt2-124m": 123.65e6}  # for results written without "params"


def params(row: dict) -> float:
    return row.get("params") or PARAMS[row["size"]]


def save(fig, ax, name: str, fontsize: float | None = None) -> Path:
    """Legend, grid, and ``fig`` written to docs/img/NAME; returns the path."""
    ax.legend(fontsize=fontsize)
    ax.grid(alpha=0.3, which="both")
    path = OUT / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def first_per_case(rows: list[dict]) -> list[dict]:
    """The first row of each (size, context): a case run again at another batch (gpt2-124m
    at context 1024, batch 4) stays in the tables, out of the lines."""
    seen: set[tuple] = set()
    return [r for r in rows if (key := (r["size"], r["context"])) not in seen and not seen.add(key)]


def train_plots(rows: list[dict], bf16: list[dict]) -> list[Path]:
    rows, bf16 = first_per_case(rows), first_per_case(bf16)
    sizes = sorted({r["size"] for r in rows}, key=lambda s: params(next(r for r in rows
                                                                       if r["size"] == s)))
    contexts = sorted({r["context"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4))
    for size in sizes:
        mine = sorted((r for r in rows if r["size"] == size), key=lambda r: r["context"])
        ctx = [r["context"] for r in mine]
        ax.plot(ctx, [r["attnkit_tokens_per_s"] for r in mine], "o-", label=f"attnkit {size}")
        if all("hf_tokens_per_s" in r for r in mine):
            ax.plot(ctx, [r["hf_tokens_per_s"] for r in mine], "s--", label=f"transformers {size}")
        if all("compiled_tokens_per_s" in r for r in mine):
            ax.plot(ctx, [r["compiled_tokens_per_s"] for r in mine], "^:",
                    label=f"attnkit compiled {size}")
        half = sorted((r for r in bf16 if r["size"] == size), key=lambda r: r["context"])
        if half:
            ax.plot([r["context"] for r in half], [r["attnkit_tokens_per_s"] for r in half],
                    "D-", label=f"attnkit bf16 {size}")
            if all("hf_tokens_per_s" in r for r in half):
                ax.plot([r["context"] for r in half], [r["hf_tokens_per_s"] for r in half],
                        "x--", label=f"transformers bf16 {size}")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="training tokens/s",
           title="Training throughput, 2 CPU cores" + (" (fp32 and bf16)" if bf16 else " (fp32)"))
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.xaxis.set_minor_formatter(NullFormatter())
    tokens = save(fig, ax, "bench_train_tokens.png", fontsize=8)

    fig, ax = plt.subplots(figsize=(6, 4))
    for ctx in contexts:
        mine = sorted((r for r in rows if r["context"] == ctx), key=params)
        n = [params(r) for r in mine]
        ax.plot(n, [100 * r["attnkit_mfu"] for r in mine], "o-", label=f"attnkit, context {ctx}")
        if all("hf_mfu" in r for r in mine):
            ax.plot(n, [100 * r["hf_mfu"] for r in mine], "s--", label=f"transformers, context {ctx}")
    ax.set(xscale="log", xlabel="parameters", ylabel="MFU (% of measured fp32 matmul peak)",
           title="Model-FLOPs utilisation vs model size", ylim=(0, 100))
    mfu = save(fig, ax, "bench_train_mfu.png", fontsize=8)
    return [tokens, mfu]


def memory_plot(rows: list[dict]) -> Path:
    ctx = [r["context"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ctx, [r["fused_step_mb"] for r in rows], "o-", label="fused attention (sdpa)")
    ax.plot(ctx, [r["eager_step_mb"] for r in rows], "s--", label="eager softmax(QK^T)V")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)",
           ylabel="forward + backward memory (MB)",
           title="Attention memory vs context (4 layers, d_model 256)")
    ax.set_xticks(ctx, [str(c) for c in ctx])
    ax.xaxis.set_minor_formatter(NullFormatter())
    return save(fig, ax, "bench_memory.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    written = []
    train = HERE / "results" / "train.json"
    half = HERE / "results" / "train-bf16.json"
    if train.exists():
        written += train_plots(json.loads(train.read_text())["rows"],
                               json.loads(half.read_text())["rows"] if half.exists() else [])
    memory = HERE / "results" / "memory.json"
    if memory.exists():
        written.append(memory_plot(json.loads(memory.read_text())["context"]))
    for p in written:
        print(f"-> {p}")


if __name__ == "__main__":
    main()
