"""Data parallelism on CPU: two gloo processes under torchrun train exactly like one process.

Every two-process run here is the real command line, ``python -m torch.distributed.run
--standalone --nproc_per_node=2 -m attnkit train ...``, on a ~30k-parameter decoder for 20
steps; one-process runs (the reference, and FSDP in one process) run in this process.
Losses in metrics.jsonl are rounded to 5 decimals, so "equal" below means within one unit
of that last digit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnkit.cli import main

TINY = ["--model.n_layers=2", "--model.d_model=32", "--model.n_heads=2",
        "--model.context_length=32", "--train.steps=20", "--train.batch_size=8",
        "--train.eval_every=10", "--train.eval_batches=2", "--train.checkpoint_every=10",
        "--train.log_every=1", "--train.device=cpu", "--no-samples"]
ROUNDING = 1.01e-5  # one unit in the 5th decimal of the logged loss


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dist")


def child_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(ATTNKIT_CACHE=str(work / "cache"), OMP_NUM_THREADS="1")
    return env


def launch(work: Path, *argv: str) -> subprocess.CompletedProcess:
    """``attnkit train *argv`` in two processes under torchrun."""
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run([*head, "-m", "attnkit", "train", *argv], cwd=work,
                          env=child_env(work), capture_output=True, text=True, timeout=240)


def torchrun(work: Path, *argv: str) -> str:
    """``attnkit train *argv`` under torchrun, which must succeed; returns what it printed."""
    proc = launch(work, *argv)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def torchrun_fails(work: Path, *argv: str) -> tuple[str, str]:
    """``attnkit train *argv`` under torchrun, which must fail: returns our one ``error:`` line
    (checked to be the only one) and the "Root Cause" part of torchrun's failure summary."""
    proc = launch(work, *argv)
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-4000:]  # rank 0 alone says it
    assert "Root Cause (first observed failure):" in proc.stderr, proc.stderr[-4000:]
    return lines[0], proc.stderr.split("Root Cause (first observed failure):")[1]


def in_process(work: Path, monkeypatch: pytest.MonkeyPatch, *argv: str,
               env: dict[str, str] | None = None) -> int:
    """``attnkit train *argv`` in this process, with ``env`` as the launch variables."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("ATTNKIT_CACHE", str(work / "cache"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    return main(["train", *argv])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path, step: int = 20) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


def assert_same_training(run: Path, ref: Path, atol: float) -> None:
    """Same logged losses (train and validation) at every step, and close final weights."""
    a, b = metrics(run), metrics(ref)
    assert [m["step"] for m in a] == [m["step"] for m in b] == list(range(1, 21))
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= max(atol, ROUNDING), (x, y)
        assert abs(x.get("val_loss", 0) - y.get("val_loss", 0)) <= max(atol, ROUNDING), (x, y)
    wa, wb = weights(run), weights(ref)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)


def rewind(run: Path, copy: Path, step: int = 10) -> Path:
    """A copy of ``run`` whose latest checkpoint is ``step``, as if it had stopped there."""
    shutil.copytree(run, copy)
    ckpts = copy / "checkpoints"
    for p in ckpts.glob("step-*"):
        if int(p.name.split("-")[1]) > step:
            shutil.rmtree(p)
    (ckpts / "latest").write_text(f"step-{step:06d}\n")
    return copy


def one_process(work: Path, *argv: str) -> str:
    """``attnkit train *argv`` in this process, as one plain process; returns its stdout."""
    import contextlib
    import io

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        rc = in_process(work, mp, *argv)
    assert rc == 0, out.getvalue()[-2000:]
    return out.getvalue()


@pytest.fixture(scope="module")
def reference(work) -> Path:
    """One process, no parallelism: the run every other run must reproduce."""
    one_process(work, *TINY, "--out", "ref")
    return work / "ref"


@pytest.fixture(scope="module")
def fsdp2(work, reference) -> Path:
    torchrun(work, *TINY, "--parallel", "fsdp", "--out", "fsdp2")
    return work / "fsdp2"


def test_ddp_on_two_processes_matches_one_process(work, reference):
    out = torchrun(work, *TINY, "--out", "ddp2")  # ddp: the default under torchrun
    assert "parallel: ddp over 2 processes, 4 sequences each per step" in out
    assert out.count("done: step 20") == 1  # rank 0 alone prints
    assert_same_training(work / "ddp2", reference, atol=1e-5)
    assert not (work / "ddp2" / "checkpoints" / "step-000020" / "sharded").exists()


def test_fsdp_on_two_processes_matches_one_process(fsdp2, reference):
    assert_same_training(fsdp2, reference, atol=1e-4)
    ckpt = fsdp2 / "checkpoints" / "step-000020"
    assert (ckpt / "sharded" / ".metadata").is_file() and (ckpt / "model.safetensors").is_file()
    assert not list((fsdp2 / "checkpoints").glob(".tmp-*"))
    import attnkit

    run = attnkit.load(fsdp2)  # the consolidated weights serve `attnkit sample` and load()
    assert run.model.num_params() > 0


def test_fsdp_checkpoint_of_two_ranks_resumes_on_one(work, fsdp2, reference):
    run = rewind(fsdp2, work / "fsdp2-to-1")
    out = one_process(work, "--resume", str(run), "--no-samples")  # fsdp in one process
    assert "resumed" in out and "at step 10" in out
    assert_same_training(run, reference, atol=1e-4)
    run = rewind(fsdp2, work / "fsdp2-to-plain")  # no process group at all
    one_process(work, "--resume", str(run), "--parallel", "none", "--no-samples")
    assert_same_training(run, reference, atol=1e-4)


def test_fsdp_checkpoint_of_one_rank_resumes_on_two(work, reference):
    one_process(work, *TINY, "--parallel", "fsdp", "--out", "fsdp1")
    assert_same_training(work / "fsdp1", reference, atol=1e-4)
    run = rewind(work / "fsdp1", work / "fsdp1-to-2")
    out = torchrun(work, "--resume", str(run), "--train.activation_checkpointing=true",
                 "--no-samples")
    assert "parallel: fsdp over 2 processes" in out
    assert_same_training(run, reference, atol=1e-4)


@pytest.mark.slow
def test_single_file_checkpoint_resumes_under_fsdp(work, reference):
    run = rewind(reference, work / "ref-to-fsdp2")
    torchrun(work, "--resume", str(run), "--parallel", "fsdp", "--no-samples")
    assert_same_training(run, reference, atol=1e-4)
    assert (run / "checkpoints" / "step-000020" / "sharded").is_dir()


def test_ddp_with_gradient_accumulation_matches_one_process(work, monkeypatch):
    accum = [*TINY, "--train.grad_accum=2"]
    assert in_process(work, monkeypatch, *accum, "--out", "accum-ref") == 0
    torchrun(work, *accum, "--out", "accum-ddp2")
    assert_same_training(work / "accum-ddp2", work / "accum-ref", atol=1e-5)


def test_activation_checkpointing_changes_nothing_but_memory(work, monkeypatch):
    assert in_process(work, monkeypatch, *TINY, "--model.dropout=0.1", "--out", "ac-off") == 0
    assert in_process(work, monkeypatch, *TINY, "--model.dropout=0.1", "--out", "ac-on",
                      "--train.activation_checkpointing=true") == 0
    assert_same_training(work / "ac-on", work / "ac-off", atol=1e-6)


def test_ddp_in_one_process_trains_on_one_device(work, monkeypatch, capsys):
    assert in_process(work, monkeypatch, *TINY, "--train.steps=2", "--parallel", "ddp",
                      "--out", "ddp1") == 0
    assert "ddp is not needed; training on one device" in capsys.readouterr().out


BAD = [
    ("batch not divisible", {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                             "MASTER_PORT": "1"}, ["--train.batch_size=6", "--train.grad_accum=2"],
     "= 3 sequences per micro-batch cannot be split over 2 processes (use a train.batch_size "
     "that is a multiple of 4, e.g. --train.batch_size=8"),
    ("no MASTER_ADDR", {"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "29500"}, [],
     "RANK is set but MASTER_ADDR is missing: run under torchrun"),
    ("fsdp on the LSTM", {}, ["--model.family=lstm", "--parallel", "fsdp"],
     "--parallel fsdp shards a model block by block, and LSTMLanguageModel has no blocks"),
    ("fsdp with fp16", {}, ["--parallel", "fsdp", "--train.precision=fp16"],
     "--parallel fsdp trains in fp32 or bf16"),
]


@pytest.mark.parametrize("env, argv, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_launches_are_one_line_errors(work, monkeypatch, capsys, env, argv, message):
    capsys.readouterr()
    tiny = [a for a in TINY if "--model.family=lstm" not in argv or not a.startswith("--model.n_heads")]
    rc = in_process(work, monkeypatch, *tiny, *argv, "--out", "bad", env=env)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (work / "bad" / "checkpoints").exists()


def test_a_failed_torchrun_run_says_why_once_and_in_torchruns_summary(work):
    """torchrun prints its own traceback and summary after our line; the summary's root cause
    is our line (written to TORCHELASTIC_ERROR_FILE), not "To enable traceback see ..."."""
    line, root_cause = torchrun_fails(work, *TINY, "--train.steps=abc", "--out", "bad-config")
    assert line == "error: train.steps must be an integer, got 'abc'"
    assert "rank      : 0" in root_cause and f"traceback : {line}\n" in root_cause
    assert not (work / "bad-config").exists()
