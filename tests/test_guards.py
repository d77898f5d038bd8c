"""Training guards (non-finite and spiking losses) and crash safety: a run killed with
SIGKILL at any moment - between steps or in the middle of a checkpoint write - resumes to
bit-identical weights."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import TINY, cli, metrics, snapshot
from test_errors import error_line

from attnkit.models import decoder as decoder_module
from attnkit.train.guards import Guard

FAST = [*TINY, "--no-samples", "--train.log_every=1"]


def poison(monkeypatch, bad_calls: set[int], factor: float = float("nan")) -> None:
    """Multiply the training loss by ``factor`` on the given (1-based) training forward calls."""
    original = decoder_module.Decoder.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        logits, loss = original(self, *args, **kwargs)
        if self.training and loss is not None:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                loss = loss * factor
        return logits, loss

    monkeypatch.setattr(decoder_module.Decoder, "forward", forward)


def test_guard_decisions_and_state_round_trip():
    g = Guard(max_bad_steps=2, spike_zscore=3.0, window=10, warmup=5)
    for loss in [2.0, 2.1, 1.9, 2.0, 2.05]:
        assert g.check(loss, 1.0) is None
    assert g.check(9.0, 1.0) == "spike"  # far above the recent mean
    assert g.check(2.0, float("inf")) == "non-finite"  # a finite loss, an infinite gradient
    assert g.check(float("nan"), None) == "non-finite"
    with pytest.raises(Exception, match=r"not finite for 2 steps in a row \(steps 7-8\)"):
        g.raise_if_hopeless(8, "step-000006", "runs/x")
    clone = Guard(2, 3.0, window=10, warmup=5)
    clone.load_state_dict(json.loads(json.dumps(g.state_dict())))
    assert clone.state_dict() == g.state_dict()
    assert clone.skipped == {"non-finite": 2, "spike": 1} and clone.total_skipped == 3
    assert g.check(2.0, 1.0) is None and g.bad_in_a_row == 0


def test_a_non_finite_step_is_skipped_and_counted(env, capsys, monkeypatch):
    poison(monkeypatch, {3})
    rc, out, err = cli(capsys, "train", *FAST, "--train.steps=5", "--train.checkpoint_every=1",
                       "--train.keep_checkpoints=10", "--out", "run")
    assert rc == 0, err
    assert "step 3: skipped the update (a non-finite loss or gradient)" in err  # progress
    assert "1 updates skipped" in out
    records = {m["step"]: m for m in metrics(env / "run")}
    assert records[3]["skipped"] == "non-finite" and records[3]["loss"] is None
    assert "skipped" not in records[4] and records[4]["loss"] > 0
    ckpts = env / "run" / "checkpoints"
    # step 3 changed nothing: its weights are step 2's
    assert (ckpts / "step-000003" / "model.safetensors").read_bytes() == \
        (ckpts / "step-000002" / "model.safetensors").read_bytes()
    assert (ckpts / "step-000004" / "model.safetensors").read_bytes() != \
        (ckpts / "step-000003" / "model.safetensors").read_bytes()
    state = json.loads((ckpts / "step-000005" / "state.json").read_text())
    assert state["guard"]["skipped"]["non-finite"] == 1


def test_too_many_bad_steps_stop_with_the_last_good_checkpoint_intact(env, capsys, monkeypatch):
    poison(monkeypatch, set(range(3, 100)))
    rc, out, err = cli(capsys, "train", *FAST, "--train.steps=10", "--train.checkpoint_every=2",
                       "--train.max_bad_steps=3", "--train.keep_checkpoints=5", "--out", "run")
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [err.strip().splitlines()[-1]] and "Traceback" not in err
    assert "not finite for 3 steps in a row (steps 3-5)" in errors[0]
    assert "the last good checkpoint step-000004 is intact" in errors[0]
    error_line(err, only=False)  # documented in docs/errors.md
    ckpts = env / "run" / "checkpoints"
    # step 4 was written during the bad streak, but its update was skipped: still step 2's
    assert (ckpts / "latest").read_text().strip() == "step-000004"
    assert (ckpts / "step-000004" / "model.safetensors").read_bytes() == \
        (ckpts / "step-000002" / "model.safetensors").read_bytes()
    assert not list(ckpts.glob(".tmp-*"))


def test_keep_checkpoints(env, capsys):
    rc, _, err = cli(capsys, "train", *FAST, "--train.steps=5", "--train.checkpoint_every=1",
                     "--train.keep_checkpoints=2", "--out", "run")
    assert rc == 0, err
    names = sorted(p.name for p in (env / "run" / "checkpoints").iterdir())
    assert names == ["latest", "step-000004", "step-000005"]


def test_loss_spike_guard(env, capsys, monkeypatch):
    poison(monkeypatch, {24}, factor=50.0)
    rc, _, err = cli(capsys, "train", *FAST, "--train.steps=25", "--train.spike_zscore=6",
                       "--train.checkpoint_every=100", "--out", "run")
    assert rc == 0, err
    records = {m["step"]: m for m in metrics(env / "run")}
    assert records[24]["skipped"] == "spike"
    assert [s for s, m in records.items() if "skipped" in m] == [24]
    assert "step 24: skipped the update (a loss spike" in err


def test_a_failure_before_the_first_checkpoint_leaves_no_run_directory(env, capsys, monkeypatch):
    poison(monkeypatch, set(range(1, 100)))
    rc, _, err = cli(capsys, "train", *FAST, "--train.steps=10", "--train.max_bad_steps=2",
                     "--out", "run")
    assert rc == 2 and "no checkpoint was written yet" in err
    error_line(err, only=False)
    assert not (env / "run").exists()


# --------------------------------------------------------------- kill -9

KILL_IN_CHECKPOINT = """
import os, signal, sys
import attnkit.weights as ck
from attnkit.cli import main
real = ck.save_file
def save_file(tensors, path, *a, **k):
    real(tensors, path, *a, **k)
    if "step-000005" in str(path):  # the weights are half of checkpoint 5: die here
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
ck.save_file = save_file
sys.exit(main(sys.argv[1:]))
"""

RUN = [*FAST, "--train.steps=10", "--train.checkpoint_every=1", "--train.keep_checkpoints=3"]


def attnkit_process(env: Path, *argv: str, script: str | None = None) -> subprocess.Popen:
    child_env = {**os.environ, "OMP_NUM_THREADS": "1", "ATTNKIT_CACHE": str(env / "cache"),
                 "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    code = script or "import sys; from attnkit.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=env, env=child_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def final_weights(run: Path) -> bytes:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return (run / "checkpoints" / latest / "model.safetensors").read_bytes()


def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run that every killed-and-resumed run must reproduce."""
    env = tmp_path_factory.mktemp("reference")
    rc, _, err = finish(attnkit_process(env, "train", *RUN, "--out", "run"))
    assert rc == 0, err
    return env / "run"


def test_kill_9_between_steps_then_resume_is_bit_identical(env, reference):
    proc = attnkit_process(env, "train", *RUN, "--out", "run")
    latest = env / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if latest.is_file() and latest.read_text().strip() >= "step-000004":
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    rc, out, err = finish(attnkit_process(env, "train", "--resume", "run"))
    assert rc == 0, err
    assert "resumed" in out
    assert final_weights(env / "run") == final_weights(reference)
    assert losses(env / "run") == losses(reference)


def test_kill_9_in_the_middle_of_a_checkpoint_write_then_resume(env, reference):
    proc = attnkit_process(env, "train", *RUN, "--out", "run", script=KILL_IN_CHECKPOINT)
    rc, _, _ = finish(proc)
    assert rc == -signal.SIGKILL
    ckpts = env / "run" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-000004"  # the complete one
    assert list(ckpts.glob(".tmp-step-000005"))  # the half-written one, never published
    before = snapshot(ckpts / "step-000004")
    rc, out, err = finish(attnkit_process(env, "train", "--resume", "run"))
    assert rc == 0, err
    assert "resumed" in out and "at step 4" in out
    assert not list(ckpts.glob(".tmp-*"))
    assert final_weights(env / "run") == final_weights(reference)
    assert losses(env / "run") == losses(reference)
    assert before  # step 4 was complete and readable when the run resumed from it


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_save_a_checkpoint_and_exit_0(env, reference, signum):
    proc = attnkit_process(env, "train", *RUN, "--train.steps=100000", "--out", "run")
    latest = env / "run" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not latest.is_file():
        time.sleep(0.01)
    proc.send_signal(signum)
    rc, out, err = finish(proc)
    assert rc == 0, err
    step = int((env / "run" / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert f"interrupted: checkpoint saved at step {step}" in err
    assert "resume with `attnkit train --resume run`" in err
    assert "Traceback" not in err
    state = json.loads((env / "run" / "checkpoints" / f"step-{step:06d}" / "state.json").read_text())
    assert state["step"] == step
    assert [m["step"] for m in metrics(env / "run")][-1] <= step  # nothing logged past it
