"""The benchmark scripts run end to end on a toy case and write what docs/benchmarks.md reads.

They time nothing here (no test asserts a time): these runs only prove that each script still
works, that greedy decoding gives the same tokens on both sides (so both run the same
weights), and that each writes its JSON. Output goes to a
temporary folder (ATTNKIT_BENCH_RESULTS), never over benchmarks/results/.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def bench(tmp_path: Path, script: str, *args: str) -> str:
    env = {**os.environ, "ATTNKIT_BENCH_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=BENCH, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_generate_benchmark_greedy_and_sampled(tmp_path):
    small = ["--sizes", "tiny", "--vocab-size", "256", "--batches", "1", "2", "--tokens", "3",
             "--repeats", "1", "--dtypes", "fp32"]
    out = bench(tmp_path, "generate.py", *small)
    assert out.startswith("greedy, 3 new tokens per row")
    rows = json.loads((tmp_path / "generate.json").read_text())["rows"]
    assert [(r["size"], r["batch"]) for r in rows] == [("tiny", 1), ("tiny", 2)]
    assert all(r["same_tokens"] for r in rows)  # greedy: both sides chose the same tokens
    assert all(r["attnkit_tokens_per_s"] > 0 and r["hf_tokens_per_s"] > 0 for r in rows)
    assert "bound_tokens_per_s" in rows[0] and "bound_tokens_per_s" not in rows[1]

    out = bench(tmp_path, "generate.py", *small, "--temperature", "1")
    assert out.startswith("sampled at temperature 1,")
    sampled = json.loads((tmp_path / "generate-sampled.json").read_text())
    assert sampled["temperature"] == 1 and len(sampled["rows"]) == 2
    assert all(r["same_tokens"] is None for r in sampled["rows"])  # two random streams


def test_train_benchmark(tmp_path):
    bench(tmp_path, "train.py", "--cases", "tiny:32:2", "--steps", "1")
    result = json.loads((tmp_path / "train.json").read_text())
    assert result["matmul_peak_gflops"] > 0
    (row,) = result["rows"]
    assert (row["size"], row["context"], row["batch"]) == ("tiny", 32, 2)
    ours, theirs = row["first_loss"]  # the same batch through both: the same first loss
    assert ours == pytest.approx(theirs, abs=1e-2)
    assert row["attnkit_tokens_per_s"] > 0 and row["hf_tokens_per_s"] > 0
    assert 0 < row["attnkit_mfu"] <= 1 and 0 < row["hf_mfu"] <= 1


def test_gpu_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)
