"""Peak memory of ``attnkit train --data.format=ids`` on a large ``.npy`` of ids.

Writes a ``.npy`` of int32 ids (``--size-mb``, default about 1 GB) in pieces, then runs a
tiny ``attnkit train --data.format=ids`` for a few steps in a fresh process, which validates
the file, writes the token cache and trains from the memory map; prints that process's peak
resident memory beside the file size, after the same run on a 1 MB file (the baseline: Python,
torch and the model). A reader that loaded the array would need at least the
file size; the memory-mapped one needs the model plus a few chunks of ids.

    python benchmarks/ids_memory.py [--size-mb 1024] [--steps 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model.n_layers=1", "--model.d_model=32", "--model.n_heads=2",
        "--model.context_length=32", "--train.batch_size=4", "--train.eval_batches=2",
        "--train.eval_every=1000000", "--no-samples"]


def write_ids(path: Path, n_ids: int, vocab: int = 50_000, piece: int = 1 << 22) -> None:
    """A ``.npy`` of ``n_ids`` int32 ids below ``vocab``, written without holding it in memory."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n_ids,))
    rng = np.random.default_rng(0)
    for start in range(0, n_ids, piece):
        n = min(piece, n_ids - start)
        out[start:start + n] = rng.integers(0, vocab, n, dtype=np.int32)
    out.flush()
    del out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=1024, help="size of the id file (MB)")
    p.add_argument("--steps", type=int, default=5, help="training steps")
    p.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = p.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="attnkit-ids-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'id file':>12} {'peak RSS':>10} {'ratio':>7} {'time':>7}")
    # a 1 MB file first: the same model and steps, so the difference is what the data costs
    for name, mb in (("small", 1.0), ("large", args.size_mb)):
        size_mb, peak_mb, seconds = measure(work / name, mb, args.steps)
        print(f"{size_mb:>9.1f} MB {peak_mb:>7.1f} MB {peak_mb / size_mb:>7.2f} {seconds:>6.1f}s",
              flush=True)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, size_mb: float, steps: int) -> tuple[float, float, float]:
    """(file MB, peak RSS MB of the training process, its seconds) for one file size."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "ids.npy"
    write_ids(path, int(size_mb * 2**20) // 4)
    env = {**os.environ, "ATTNKIT_CACHE": str(work / "cache")}
    cmd = [sys.executable, "-m", "attnkit", "train", *TINY, "--data.format=ids",
           f"--data.path={path}", f"--train.steps={steps}", "--out", str(work / "run")]
    t0 = time.perf_counter()
    # a fresh interpreter per size: ru_maxrss of a child is its own peak, in KiB on Linux
    code = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *cmd], env=env, capture_output=True,
                          text=True, cwd=ROOT)  # the repository's attnkit, not another install
    if done.returncode != 0:
        sys.exit(f"attnkit train failed ({done.returncode}):\n{done.stderr}")
    peak_kib = int(done.stdout.strip().splitlines()[-1])
    return path.stat().st_size / 2**20, peak_kib / 1024, time.perf_counter() - t0


if __name__ == "__main__":
    main()
