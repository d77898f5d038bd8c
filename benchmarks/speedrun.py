"""Speedrun: wall-clock time for ``attnkit train`` to reach validation loss <= 1.88 on
character-level tinyshakespeare, on this machine's CPU.

Runs ``attnkit train speedrun-shakespeare-cpu --data.path=...`` as a user would (a fresh
process, so start-up and data preparation count), then scores the final model on the
*whole* validation split - the last 10% of the file, as in nanoGPT - in non-overlapping
windows of the model's context, every character predicted once. With ``--reference`` it
also runs nanoGPT's own CPU recipe (4 layers, 128 dims, context 64, batch 12, 2000 steps,
lr 1e-3) through the same trainer, side by side. Results go to
``benchmarks/results/speedrun.json``.

    python benchmarks/speedrun.py [--data ../shared/data/tinyshakespeare.txt] [--reference]
                                  [SECTION.KEY=VALUE ...]     # e.g. train.precision=bf16
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from reference import RESULTS

import attnkit
from attnkit.data import split_sizes

TARGET = 1.88  # nanoGPT's published val loss for its CPU recipe
NANOGPT_SECONDS = 170  # nanoGPT's recipe on this kind of machine (2 min 50 s, issue 8)


@torch.inference_mode()
def full_val_loss(run: Path, data: Path) -> tuple[float, int]:
    """Mean next-character loss over the whole last 10% of ``data`` and the tokens scored."""
    loaded = attnkit.load(run)
    model = loaded.model
    text = data.read_text(encoding="utf-8")
    ids = loaded.tokenizer.encode(text)
    n_train, _ = split_sizes(len(ids), 0.1)  # the trainer's own split: the last 10%
    val = torch.tensor(ids[n_train:])
    ctx = model.cfg.context_length
    n = (len(val) - 1) // ctx * ctx
    x, y = val[:n].view(-1, ctx), val[1:n + 1].view(-1, ctx)
    total = 0.0
    for i in range(0, len(x), 256):
        logits, _ = model(x[i:i + 256])
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[i:i + 256].flatten(),
                                                   reduction="sum").item()
    return total / n, n


def train(recipe: str, data: Path, out: Path, extra: list[str]) -> float:
    """Run ``attnkit train`` in a fresh process; its wall time in seconds."""
    cmd = [sys.executable, "-m", "attnkit", "train", recipe, f"--data.path={data}", "--out",
           str(out), "--train.samples=0", *extra]
    print("$ " + " ".join(["attnkit", *cmd[3:]]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path,
                        default=here.parent.parent / "shared/data/tinyshakespeare.txt")
    parser.add_argument("--recipe", default="speedrun-shakespeare-cpu")
    parser.add_argument("--reference", action="store_true",
                        help="also run nanoGPT's recipe (lr 1e-3) through attnkit, side by side")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: temp)")
    parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE",
                        help="config overrides for the recipe's run, e.g. train.precision=bf16")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"error: {args.data} not found (pass --data PATH to tinyshakespeare.txt)",
              file=sys.stderr)
        return 2
    root = args.out or Path(tempfile.mkdtemp())
    runs = [(args.recipe, ["--" + o.removeprefix("--") for o in args.overrides])]
    if args.reference:
        runs.append(("shakespeare-char", ["--train.lr=1e-3", "--train.min_lr=1e-4"]))
    results = []
    for recipe, extra in runs:
        out = root / recipe
        wall = train(recipe, args.data, out, extra)
        loss, n = full_val_loss(out, args.data)
        results.append({"recipe": recipe, "overrides": extra, "wall_s": round(wall, 1),
                        "full_val_loss": round(loss, 4), "val_tokens": n})
        verdict = "reached" if loss <= TARGET else "MISSED"
        print(f"{recipe}: {wall:.1f} s wall, full-split val loss {loss:.4f} over {n:,} "
              f"characters ({verdict} {TARGET})", flush=True)
    best = results[0]
    line = (f"speedrun: {best['wall_s']:.1f} s to val {best['full_val_loss']:.4f} | "
            f"nanoGPT recipe on this machine ~{NANOGPT_SECONDS} s "
            f"({NANOGPT_SECONDS / best['wall_s']:.2f}x)")
    if len(results) > 1:
        ref = results[1]
        line += (f" | same recipe through attnkit {ref['wall_s']:.1f} s, val "
                 f"{ref['full_val_loss']:.4f} ({ref['wall_s'] / best['wall_s']:.2f}x)")
    print(line)
    out = RESULTS / "speedrun.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"target": TARGET, "torch": torch.__version__,
                               "threads": torch.get_num_threads(), "runs": results},
                              indent=2) + "\n")
    print(f"-> {out}")
    return 0 if best["full_val_loss"] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
