"""The bad-input catalogue (docs/errors.md), one test per entry, through the real command line.

Each bad input must give exit code 2, exactly one line on stderr (no traceback) that names the
problem and the fix, and leave nothing half-written: no run directory or checkpoint appears,
and an existing run is unchanged byte for byte. Every message must also be documented: it
matches one of the ``error: ...`` lines of docs/errors.md, where ``{...}`` stands for a
variable part.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_cli
import torch
from test_cli import TINY, cli, snapshot, write

import attnkit.cli
import attnkit.errors
import attnkit.runs
import attnkit.weights
from attnkit.tokenizers import train_tokenizer

trained_run = test_cli.trained_run  # a fixture shared with test_cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
CKPT = "checkpoints/step-000003"  # the one checkpoint of test_cli's trained_run


def documented() -> list[re.Pattern]:
    """Each ``error: ...`` line of docs/errors.md as a regex; ``{...}`` matches anything."""
    patterns = []
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("error: "):
            parts = re.split(r"\{[^}]*\}", line)
            patterns.append(re.compile(".*".join(re.escape(p) for p in parts) + "$"))
    return patterns


DOCUMENTED = documented()
#: The documented lines that some test produced, for the catalogue check (tests/conftest.py):
#: a documented message that no test triggers is either dead or untested.
MATCHED: set[str] = set()
#: Documented lines no test on this machine can trigger, each with the reason.
UNTRIGGERABLE = {
    "error: device '{name}' does not exist ({n} CUDA devices visible)": "needs a CUDA machine",
}


def is_documented(line: str) -> bool:
    """Whether ``line`` is one of docs/errors.md's messages (and note which one it is)."""
    hits = [p.pattern for p in DOCUMENTED if p.match(line)]
    MATCHED.update(hits)
    return bool(hits)


def error_line(err: str, *words: str, only: bool = True) -> str:
    """The one ``error:`` line of ``err``; checks it holds ``words`` and is documented.
    ``only=False``: other lines (training progress) may come before it."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    if only:
        assert len(lines) == 1, err
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    line = lines[-1]
    for w in words:
        assert w in line, (w, line)
    assert is_documented(line), f"not in docs/errors.md: {line}"
    return line


def refused(result: tuple[int, str, str], *words: str) -> str:
    rc, out, err = result
    assert rc == 2, (rc, out, err)
    assert out == "", out
    return error_line(err, *words)


@pytest.fixture
def run(trained_run, env) -> Path:
    """A private copy of the trained run at ./run, to damage."""
    shutil.copytree(trained_run, env / "run")
    return Path("run")


class Planted:
    """A pickle payload that makes a folder when unpickled: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def plant(path: Path, marker: Path, torch_format: bool = False) -> None:
    if torch_format:  # the zip container torch.save writes, with the payload inside
        torch.save({"optimizer": Planted(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"optimizer": Planted(marker)}))


# ------------------------------------------------------------------ training input


TRAIN = [
    # (id, overrides, words the message must hold)
    ("missing data file", ["--data.path=missing.txt"], ["corpus not found: missing.txt"]),
    ("empty data file", ["--data.path=empty.txt"], ["empty.txt is empty"]),
    ("whitespace-only data file", ["--data.path=blank.txt"], ["contains only whitespace"]),
    ("binary data file", ["--data.path=binary.dat"], ["binary.dat looks binary"]),
    ("non-UTF-8 data file", ["--data.path=latin1.txt"], ["not valid UTF-8", "iconv"]),
    ("folder without text", ["--data.path=emptydir"], ["has no non-empty text files"]),
    ("binary file in a folder", ["--data.path=mixed"], ["looks binary"]),
    ("corpus shorter than the context", ["--data.path=short.txt"],
     ["corpus too short", "lower --model.context_length"]),
    ("unknown key", ["--train.stpes=3"], ["unknown config key 'train.stpes'",
                                          "did you mean 'train.steps'"]),
    ("unknown section", ["--trian.steps=3"], ["did you mean 'train.steps'"]),
    ("unknown key like no other", ["--qqq.zzzzzz=3"], ["unknown config key 'qqq.zzzzzz' (see"]),
    ("key in the wrong section", ["--train.d_model=64"], ["did you mean 'model.d_model'"]),
    ("key of another family", ["--model.n_encoder_layers=2"],
     ["does not apply to the decoder family"]),
    ("not an integer", ["--train.steps=abc"], ["train.steps must be an integer, got 'abc'"]),
    ("not a number", ["--train.lr=fast"], ["train.lr must be a number"]),
    ("not a finite number", ["--train.lr=nan"], ["train.lr must be a finite number"]),
    ("not a boolean", ["--model.bias=maybe"], ["model.bias must be true or false"]),
    ("not one of the choices", ["--model.pos=ropee"], ["did you mean 'rope'"]),
    ("unknown preset", ["--model.size=tiyn"], ["did you mean 'tiny'"]),
    ("out of range", ["--train.steps=0"], ["train.steps must be at least 1"]),
    ("override without a value", ["--train.steps"], ["has no value"]),
    ("d_model not divisible by n_heads", ["--model.n_heads=3"],
     ["model.d_model=32 is not divisible by model.n_heads=3"]),
    ("n_heads not divisible by n_kv_heads", ["--model.n_heads=4", "--model.n_kv_heads=3"],
     ["model.n_heads=4 is not divisible by model.n_kv_heads=3"]),
    ("RoPE with an odd head size", ["--model.pos=rope", "--model.d_model=30"],
     ["rope needs an even head size"]),
    ("task of another family", ["--data.task=seq2seq"], ["does not fit model.family=decoder"]),
    ("BPE vocabulary too small", ["--data.tokenizer=bpe", "--data.vocab_size=100"],
     ["--data.vocab_size >= 257"]),
    ("tokenizer file missing", ["--data.tokenizer=nowhere/tokenizer.json"],
     ["unknown tokenizer 'nowhere/tokenizer.json'"]),
    ("CUDA asked for but absent", ["--train.device=cuda"], ["CUDA is not available"]),
    ("GPU index that does not exist", ["--train.device=cuda:7"], ["cuda:7"]),
    ("MPS asked for but absent", ["--train.device=mps"], ["MPS is not available"]),
    ("unknown device", ["--train.device=tpu"], ["unknown device 'tpu'"]),
    ("fp16 on the CPU", ["--train.device=cpu", "--train.precision=fp16"], ["fp16"]),
    ("beta1 of 2", ["--train.beta1=2"], ["train.beta1 must be in [0, 1), got 2.0"]),
    ("beta2 of 1.5", ["--train.beta2=1.5"], ["train.beta2 must be in [0, 1), got 1.5"]),
    ("negative gradient clip", ["--train.grad_clip=-1"],
     ["train.grad_clip must be 0 or more (0 disables clipping), got -1.0"]),
    ("negative warmup", ["--train.warmup_steps=-1"], ["train.warmup_steps must be 0 or more"]),
    ("negative weight decay", ["--train.weight_decay=-0.1"],
     ["train.weight_decay must be 0 or more, got -0.1"]),
    ("negative min_lr", ["--train.min_lr=-1"], ["train.min_lr must be in [0, train.lr="]),
    ("min_lr above lr", ["--train.lr=0.001", "--train.min_lr=0.01"],
     ["train.min_lr must be in [0, train.lr=0.001], got 0.01"]),
    ("seed beyond 64 bits", [f"--train.seed={2**64}"],
     ["train.seed must be an integer from 0 to 2**63 - 1"]),
    ("negative seed", ["--train.seed=-1"], ["train.seed must be an integer from 0 to 2**63 - 1"]),
    ("a batch no memory holds", ["--train.batch_size=10000000"],
     ["this run needs at least", "of activations per micro-batch", "free", "--force"]),
    ("a model too wide for memory", ["--model.d_model=1000000"],
     ["this run needs at least", "with their gradients and optimizer state", "--force"]),
    ("a model too deep for memory", ["--model.n_layers=1000000"],
     ["this run needs at least", "--force"]),
]


def _make_inputs(root: Path) -> None:
    write(root / "empty.txt", "")
    write(root / "blank.txt", "  \n\t\n")
    (root / "binary.dat").write_bytes(b"PK\x03\x04\x00\x00binary" * 20)
    (root / "latin1.txt").write_bytes("café crème brûlée\n".encode("latin-1") * 20)
    (root / "emptydir").mkdir()
    (root / "mixed").mkdir()
    write(root / "mixed" / "a.txt", "some text\n" * 50)
    (root / "mixed" / "b.txt").write_bytes(b"\x00\x01\x02" * 10)
    write(root / "short.txt", "hello world\n" * 3)


@pytest.mark.parametrize("extra, words", [c[1:] for c in TRAIN], ids=[c[0] for c in TRAIN])
def test_bad_training_input(env, capsys, extra, words):
    if "cuda" in extra[0] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if "mps" in extra[0] and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    _make_inputs(env)
    refused(cli(capsys, "train", *TINY, "--train.steps=1", "--no-samples", *extra, "--out", "out"),
            *words)
    assert not (env / "out").exists() and not (env / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")
def test_mps_asked_for_but_absent_when_loading_a_run(trained_run, capsys):
    refused(cli(capsys, "sample", trained_run, "--device", "mps"),
            "MPS is not available (use --device=cpu or auto)")


@pytest.mark.parametrize("command", [["sample"], ["inspect", "--prompt", "The "], ["serve"]],
                         ids=["sample", "inspect", "serve"])
def test_a_device_asked_for_but_absent_when_loading_a_run(trained_run, capsys, command):
    argv = [command[0], trained_run, *command[1:], "--device", "cuda"]
    refused(cli(capsys, *argv), "CUDA is not available (use --device=cpu or auto)")


def test_a_recipe_that_is_not_yaml(env, capsys):
    write(env / "broken.yaml", "model:\n  d_model: [64\n")
    refused(cli(capsys, "train", "broken.yaml", "--out", "out"), "broken.yaml is not valid YAML")
    assert not (env / "out").exists()


# ------------------------------------------------------------------ where a run is written


def test_out_inside_a_file(env, capsys):
    write(env / "notes.txt", "x")
    refused(cli(capsys, "train", *TINY, "--train.steps=1", "--out", "notes.txt/run"),
            "Not a directory: notes.txt/run")


def test_unwritable_run_directory(env, capsys, monkeypatch):
    parent = env / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    if os.access(parent, os.W_OK):  # root ignores the mode bits: say no as the OS would
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if Path(self).absolute().is_relative_to(parent):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    try:
        refused(cli(capsys, "train", *TINY, "--train.steps=1", "--out", "readonly/run"),
                "Permission denied: readonly/run")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_out_pointing_at_an_existing_run(run, capsys):
    before = snapshot(run)
    refused(cli(capsys, "train", *TINY, "--train.steps=1", "--out", run), "already holds a run",
            "--resume run")
    assert snapshot(run) == before


def _checkpoint_files(run: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(run).items() if k.startswith("checkpoints")}


@pytest.mark.parametrize("where", ["weights", "latest pointer"])
def test_full_disk_during_a_checkpoint(run, capsys, monkeypatch, where):
    before = _checkpoint_files(run)
    full = OSError(errno.ENOSPC, "No space left on device")
    real_replace = os.replace

    def save_file(*args, **kwargs):
        raise full

    def replace(src, dst):
        if Path(dst).name == "latest":
            raise full
        return real_replace(src, dst)

    with monkeypatch.context() as mp:
        if where == "weights":
            mp.setattr(attnkit.weights, "save_file", save_file)
        else:
            mp.setattr(attnkit.runs.os, "replace", replace)
        rc, out, err = cli(capsys, "train", "--resume", run, "--train.steps=5", "--no-samples")
    assert rc == 2
    error_line(err, "could not write checkpoint in run/checkpoints: No space left on device",
               only=False)  # the progress of steps 4 and 5 comes first
    after = _checkpoint_files(run)
    # the previous checkpoint and `latest` are untouched, and no temporary file is left
    assert {k: after[k] for k in before} == before
    assert (run / "checkpoints" / "latest").read_text() == "step-000003\n"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    if where == "weights":
        assert after == before
    # and the run still resumes once there is room again
    rc, _, err = cli(capsys, "train", "--resume", run, "--train.steps=5", "--no-samples")
    assert rc == 0, err
    assert (run / "checkpoints" / "latest").read_text() == "step-000005\n"


@pytest.fixture
def small_disk(env):
    """A folder on a tmpfs of its own, to fill for real (mounting needs root: skipped without)."""
    disks = []

    def mount(size: int) -> Path:
        where = env / f"disk{len(disks)}"
        where.mkdir()
        size = max(4096, size // 4096 * 4096)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        disks.append(where)
        return where

    yield mount
    for where in disks:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _size(path: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in path.rglob("*") if p.is_file())


def _resume_refused_on(disk: Path, run: Path, capsys, monkeypatch, fill: bool = False) -> str:
    """Copy ``run`` onto ``disk`` (filled to the last byte if ``fill``), resume it there to
    step 5, check it fails with exit code 2 and return its stderr."""
    shutil.copytree(run, disk / "run")
    if fill:
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 512):
                pass
        os.close(fd)
    monkeypatch.chdir(disk)
    rc, out, err = cli(capsys, "train", "--resume", "run", "--train.steps=5", "--no-samples")
    assert rc == 2, (out, err)
    return err


@pytest.mark.parametrize("fails_at", ["optimizer.pt", "model.safetensors"])
def test_a_really_full_disk_during_a_checkpoint(run, small_disk, capsys, monkeypatch, fails_at):
    """No faked OSError: the disk fills up, so torch.save raises its RuntimeError and
    safetensors its SafetensorError. The documented line, no half-written .tmp-step folder,
    the previous checkpoint still ``latest``."""
    ckpt = _size(run / CKPT)
    weights = _size(run / CKPT / "model.safetensors")
    room = weights + ckpt // 8 if fails_at == "optimizer.pt" else weights // 2
    disk = small_disk(_size(run) + 64 * 1024 + room)  # the run, metrics to come, then `room`
    before = _checkpoint_files(run)
    err = _resume_refused_on(disk, run, capsys, monkeypatch)
    error_line(err, "could not write checkpoint in run/checkpoints: No space left on device",
               only=False)
    after = _checkpoint_files(Path("run"))
    assert {k: after[k] for k in before} == before
    assert Path("run/checkpoints/latest").read_text() == "step-000003\n"
    assert not [p.name for p in Path("run/checkpoints").iterdir() if p.name.startswith(".")]
    assert not [p for p in Path("run").rglob(".*tmp*")]


def test_a_full_disk_when_resuming_leaves_no_temporary_file(run, small_disk, capsys, monkeypatch):
    disk = small_disk(_size(run) + 64 * 1024)
    before = snapshot(run)
    err = _resume_refused_on(disk, run, capsys, monkeypatch, fill=True)
    error_line(err, "could not rewrite run/metrics.jsonl to resume: No space left on device",
               only=False)
    assert snapshot(Path("run")) == before  # no 0-byte .metrics.jsonl.tmp either


def test_resuming_a_finished_run_says_it_is_finished(run, capsys):
    before = snapshot(run)
    refused(cli(capsys, "train", "--resume", run), "run is finished: it trained all 3 steps",
            "--train.steps=N above 3")
    assert snapshot(run) == before
    rc, _, err = cli(capsys, "train", "--resume", run, "--train.steps=4", "--no-samples")
    assert rc == 0, err


def test_a_failed_start_in_a_folder_of_yours_leaves_only_your_files(env, capsys, monkeypatch):
    mine = env / "mine"
    mine.mkdir()
    write(mine / "notes.txt", "my notes\n")
    refused(cli(capsys, "train", *TINY, "--model.n_layers=1000000", "--out", "mine"),
            "this run needs at least")
    assert sorted(os.listdir(mine)) == ["notes.txt"]

    def boom(*args, **kwargs):  # a failure after config.json and tokenizer.json were written
        raise attnkit.errors.AttnkitError("boom")

    monkeypatch.setattr("attnkit.train.trainer.build_model", boom)
    rc, _, err = cli(capsys, "train", *TINY, "--train.steps=1", "--out", "mine")
    assert rc == 2 and err == "error: boom\n"
    assert sorted(os.listdir(mine)) == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "my notes\n"


@pytest.mark.parametrize("flag", ["--out", "--resume"])
def test_an_empty_run_folder_is_refused(env, capsys, flag):
    """``--out ""`` would otherwise be the current folder."""
    with pytest.raises(SystemExit) as exc:  # argparse's own error path
        attnkit.cli.main(["train", *TINY, flag, ""])
    assert exc.value.code == 2
    error_line(capsys.readouterr().err, f"argument {flag}: needs a folder name")
    assert os.listdir(env) == []


def test_out_never_overwrites_a_config_of_yours(env, capsys):
    mine = env / "mine"
    mine.mkdir()
    write(mine / "config.json", '{"mine": true}')
    before = snapshot(mine)
    refused(cli(capsys, "train", *TINY, "--train.steps=1", "--out", "mine"),
            "mine already has a config.json, which training would overwrite")
    assert snapshot(mine) == before


def test_a_step_that_would_take_minutes_is_refused_and_force_overrides(env, capsys, monkeypatch):
    """The step-time estimate against the measured product rate; here the rate is pinned low
    so that the test does not depend on this machine's speed. --force trains anyway, and
    skips the memory estimate too."""
    import attnkit.train.budget as budget

    monkeypatch.setattr(budget, "matmul_rate", lambda *a, **k: 1e5)
    refused(cli(capsys, "train", *TINY, "--model.context_length=256", "--train.steps=1",
                "--out", "out"), "one training step would take at least", "minutes here",
            "at the 0.1 MFLOP/s measured on this machine", "--force")
    assert not (env / "out").exists()
    monkeypatch.setattr(budget, "free_memory", lambda device: 1)
    refused(cli(capsys, "train", *TINY, "--train.steps=1", "--out", "out"),
            "this run needs at least", "but this machine has 0 MiB free")
    rc, _, err = cli(capsys, "train", *TINY, "--model.context_length=256", "--train.steps=1",
                     "--no-samples", "--force", "--out", "out")
    assert rc == 0, err


def test_the_estimate_counts_parameters_exactly_without_allocating():
    import attnkit.train.budget as budget
    from attnkit.config import config_from_dict
    from attnkit.models import build_model

    for model in ({"family": "decoder", "n_layers": 3, "n_kv_heads": 2, "ffn": "swiglu"},
                  {"family": "seq2seq", "n_encoder_layers": 2, "n_decoder_layers": 3},
                  {"family": "encoder", "n_layers": 3}, {"family": "lstm", "n_layers": 3}):
        cfg = config_from_dict({"model": {"vocab_size": 100, **model}}).model
        real = build_model(cfg)
        assert budget.count_params(cfg)[0] == sum(p.numel() for p in real.parameters()), model


def test_compile_on_a_cpu_says_it_is_slower_there(env):
    from attnkit.config import config_from_dict
    from attnkit.train.trainer import COMPILE_ON_CPU, Trainer

    cfg = config_from_dict({"model": {"n_layers": 1, "d_model": 32, "n_heads": 2,
                                      "context_length": 32},
                            "train": {"compile": True, "device": "cpu", "batch_size": 4}})
    lines: list[str] = []
    Trainer(cfg, env / "run", log=lines.append)
    assert COMPILE_ON_CPU in lines
    assert any(line == COMPILE_ON_CPU for line in DOCS.read_text().splitlines())


# ------------------------------------------------------------------ damaged run directories


def _json_edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data["model"].update(changes)
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DISAGREES = "copy run/checkpoints/step-000003/config.json over run/config.json"
DAMAGE = {
    # name: (damage, words for `sample`, words for `train --resume`; None: that command works)
    "no checkpoint": (lambda r: shutil.rmtree(r / "checkpoints"), ["holds no checkpoint"],
                      ["holds no checkpoint"]),
    "weights missing": (lambda r: (r / CKPT / "model.safetensors").unlink(),
                        ["latest names 'step-000003', which is not a complete checkpoint"],
                        ["not a complete checkpoint"]),
    "weights truncated": (lambda r: _truncate(r / CKPT / "model.safetensors"),
                          ["truncated or corrupt"], ["truncated or corrupt"]),
    "weights garbage": (lambda r: (r / CKPT / "model.safetensors").write_bytes(b"\x00" * 64),
                        ["truncated or corrupt"], ["truncated or corrupt"]),
    "latest points nowhere": (lambda r: write(r / "checkpoints/latest", "step-999999\n"),
                              ["names 'step-999999'", "e.g. step-000003"],
                              ["names 'step-999999'"]),
    "latest empty": (lambda r: write(r / "checkpoints/latest", ""), ["names ''"], ["names ''"]),
    "latest outside the run": (lambda r: write(r / "checkpoints/latest", "../../etc\n"),
                               ["names '../../etc'"], ["names '../../etc'"]),
    "latest not text": (lambda r: (r / "checkpoints/latest").write_bytes(b"\xff\xfe\x00"),
                        ["not a complete checkpoint"], ["not a complete checkpoint"]),
    "config.json missing": (lambda r: (r / "config.json").unlink(), ["has no config.json"],
                            ["has no config.json"]),
    "config.json not JSON": (lambda r: write(r / "config.json", "{model: oops"),
                             ["is not valid JSON"], ["is not valid JSON"]),
    "config.json not an object": (lambda r: write(r / "config.json", "[1, 2]"),
                                  ["must hold a JSON object"], ["must hold a JSON object"]),
    "config.json unknown key": (lambda r: _json_edit(r / "config.json", d_modle=32),
                                ["did you mean 'model.d_model'"], ["did you mean 'model.d_model'"]),
    "config.json edited, same shapes": (
        lambda r: _json_edit(r / "config.json", ffn="relu"),
        [DISAGREES, 'says model.ffn="relu" but the checkpoint was trained with model.ffn="gelu"'],
        [DISAGREES]),
    "config.json edited, another architecture": (
        lambda r: _json_edit(r / "config.json", d_model=64), [DISAGREES, "model.d_model"],
        [DISAGREES]),
    "config.json not UTF-8": (lambda r: (r / "config.json").write_bytes(b'{"model": "\xff"}'),
                              ["run/config.json", "restore config.json"],
                              ["run/config.json", "restore config.json"]),
    "another depth, checkpoint without a config copy": (
        lambda r: (_json_edit(r / "config.json", n_layers=2), (r / CKPT / "config.json").unlink()),
        ["do not fit this architecture (missing"], ["do not fit this architecture (missing"]),
    "a larger tokenizer, checkpoint without its copy": (
        lambda r: (train_tokenizer("byte", "x").save(r / "tokenizer.json"),
                   (r / CKPT / "tokenizer.json").unlink()),
        ["run/tokenizer.json has", "tokens but the model expects"], ["model.vocab_size="]),
    "checkpoint's config copy not JSON": (lambda r: write(r / CKPT / "config.json", "{oops"),
                                          ["step-000003/config.json is not valid JSON"],
                                          ["step-000003/config.json is not valid JSON"]),
    "another architecture, checkpoint without a config copy": (
        lambda r: (_json_edit(r / "config.json", d_model=64), (r / CKPT / "config.json").unlink()),
        ["do not fit this architecture"], ["do not fit this architecture"]),
    "context longer than the learned position table": (
        lambda r: (_json_edit(r / "config.json", context_length=64),
                   (r / CKPT / "config.json").unlink()),
        ["pos_emb.weight has shape (32, 32), the model expects (64, 32)"],
        ["pos_emb.weight has shape (32, 32)"]),
    "tokenizer.json missing": (lambda r: (r / "tokenizer.json").unlink(),
                               ["tokenizer file not found"], ["tokenizer file not found"]),
    "tokenizer.json not JSON": (lambda r: write(r / "tokenizer.json", "{oops"),
                                ["not valid JSON"], ["not valid JSON"]),
    "tokenizer of another run": (
        lambda r: train_tokenizer("byte", "x").save(r / "tokenizer.json"),
        ["run/tokenizer.json is not the tokenizer step-000003 was trained with"],
        ["run/tokenizer.json is not the tokenizer step-000003 was trained with"]),
    "optimizer.pt missing": (lambda r: (r / CKPT / "optimizer.pt").unlink(), None,
                             ["has no optimizer.pt"]),
    "optimizer.pt truncated": (lambda r: _truncate(r / CKPT / "optimizer.pt"), None,
                               ["optimizer.pt: the file is truncated or corrupt"]),
    "state.json not JSON": (lambda r: write(r / CKPT / "state.json", "{step: 3"), None,
                            ["state.json is not valid JSON"]),
    "state.json without a step": (lambda r: write(r / CKPT / "state.json", "{}"), None,
                                  ["state.json has no step count"]),
}


@pytest.mark.parametrize("command", ["sample", "resume"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_run(run, capsys, damage, command):
    breaks, sample_words, resume_words = DAMAGE[damage]
    breaks(run)
    before = snapshot(run)
    if command == "sample":
        result = cli(capsys, "sample", run, "--prompt", "The ", "--max-new-tokens", "3")
        if sample_words is None:  # sampling needs only weights, config and tokenizer
            assert result[0] == 0, result
        else:
            refused(result, *sample_words)
    else:
        refused(cli(capsys, "train", "--resume", run, "--train.steps=4", "--no-samples"),
                *resume_words)
    assert snapshot(run) == before


# ------------------------------------------------------------------ trust boundaries


def test_the_planted_payload_is_live(tmp_path):
    """The payload used below does run when unpickled the unsafe way: the tests prove a refusal."""
    marker = tmp_path / "pwned"
    plant(tmp_path / "evil.pt", marker)
    pickle.loads((tmp_path / "evil.pt").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("torch_format", [False, True], ids=["raw pickle", "torch.save zip"])
def test_a_pickle_planted_as_optimizer_pt_is_refused_not_run(run, capsys, torch_format):
    marker = run.parent / "pwned"
    plant(run / CKPT / "optimizer.pt", marker, torch_format)
    before = snapshot(run)
    refused(cli(capsys, "train", "--resume", run, "--train.steps=4", "--no-samples"),
            "refusing to load run/checkpoints/step-000003/optimizer.pt", "could run code")
    assert not marker.exists()
    assert snapshot(run) == before


@pytest.mark.parametrize("command", ["sample", "resume"])
def test_a_pickle_disguised_as_model_safetensors_is_refused_not_run(run, capsys, command):
    marker = run.parent / "pwned"
    plant(run / CKPT / "model.safetensors", marker)
    argv = (["sample", run] if command == "sample"
            else ["train", "--resume", run, "--train.steps=4", "--no-samples"])
    refused(cli(capsys, *argv), "cannot read weights", "truncated or corrupt")
    assert not marker.exists()


YAML_PAYLOAD = "!!python/object/apply:os.mkdir [pwned]\n"


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_configs_and_tokenizers_are_read_as_json_only(run, capsys, name):
    write(run / name, YAML_PAYLOAD)
    refused(cli(capsys, "sample", run), "not valid JSON")
    assert not Path("pwned").exists()


def test_recipes_are_read_with_the_safe_yaml_loader(env, capsys):
    write(env / "evil.yaml", YAML_PAYLOAD)
    refused(cli(capsys, "train", "evil.yaml", "--out", "out"), "evil.yaml is not valid YAML")
    assert not (env / "pwned").exists() and not (env / "out").exists()


# ------------------------------------------------------------------ prompts


@pytest.mark.parametrize("argv, words", [
    (["--prompt", "caf\u4e2d\u6587"], ["characters the char tokenizer never saw: '\u4e2d', '\u6587'"]),
    (["--prompt", "x" * 40], ["the prompt is 40 tokens but the model's context is 32"]),
    (["--prompt", ""], ["the prompt is empty"]),
    (["--prompt", "The ", "--max-new-tokens", "40", "--beam", "2"],
     ["exceed the model's context of 32"]),
], ids=["unseen characters", "longer than the context", "empty", "beam past the position table"])
def test_bad_prompt(trained_run, capsys, argv, words):
    refused(cli(capsys, "sample", trained_run, *argv), *words)


def test_generation_slides_past_the_context(trained_run, capsys):
    """A prompt must fit the context, but generation may run past it: the window slides."""
    rc, out, err = cli(capsys, "sample", trained_run, "--prompt", "The ", "--max-new-tokens", "100",
                       "--seed", "1")
    assert rc == 0, err
    assert out.startswith("The ") and len(out) == len("The ") + 100 + 1  # + the final newline


# ------------------------------------------------------------------ every command, wrong run


COMMANDS = {
    "sample": ["sample", "{run}"],
    "eval": ["eval", "{run}"],
    "translate": ["translate", "{run}", "--text", "hi"],
    "embed": ["embed", "{run}", "--text", "hi"],
    "inspect": ["inspect", "{run}", "--prompt", "The "],
    "serve": ["serve", "{run}"],
    "convert": ["convert", "{run}", "--to-hf", "exported"],
}
NOT_A_RUN = {  # what each kind of non-run is called, by command
    "missing": {c: "run directory not found: missing" for c in COMMANDS},
    "a file": {c: "notes.txt is a file, not a run directory" for c in COMMANDS},
    "an empty folder": {c: "emptydir holds no checkpoint" for c in COMMANDS},
}


@pytest.mark.parametrize("kind", list(NOT_A_RUN))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_on_something_that_is_not_a_run(env, capsys, command, kind):
    write(env / "notes.txt", "x")
    (env / "emptydir").mkdir()
    target = {"missing": "missing", "a file": "notes.txt", "an empty folder": "emptydir"}[kind]
    argv = [a.format(run=target) for a in COMMANDS[command]]
    refused(cli(capsys, *argv), NOT_A_RUN[kind][command])
    assert not (env / "exported").exists()
    assert sorted(p.name for p in env.iterdir()) == ["emptydir", "notes.txt"]


@pytest.mark.parametrize("argv, words", [
    (["eval", "run"], ["run is a decoder model; use attnkit sample"]),
    (["translate", "run", "--text", "hi"], ["run is a decoder model; use attnkit sample"]),
    (["embed", "run", "--text", "hi"], ["run holds a decoder model", "embeddings come from an encoder"]),
    (["convert", "--from-hf", "run", "--out", "imported"], ["has no 'model_type'"]),
    (["convert", "run", "--to-hf", "run"], ["run already exists and is not empty"]),
], ids=["eval", "translate", "embed", "convert --from-hf", "convert --to-hf onto itself"])
def test_commands_on_a_run_of_the_wrong_kind(run, capsys, argv, words):
    before = snapshot(run)
    refused(cli(capsys, *argv), *words)
    assert snapshot(run) == before
    assert not Path("imported").exists()


# ------------------------------------------------------------------ in a real process


def _attnkit(*argv: str, cwd: Path, script: bool = False) -> subprocess.CompletedProcess:
    exe = [shutil.which("attnkit")] if script else [sys.executable, "-m", "attnkit"]
    env = dict(os.environ, ATTNKIT_CACHE=str(cwd / "cache"))
    return subprocess.run([*exe, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def _one_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    error_line(proc.stderr, *words)


def test_subprocess_missing_data_file(env):
    _one_line(_attnkit("train", "--data.path=missing.txt", "--out", "out", cwd=env),
              "corpus not found: missing.txt")
    assert not (env / "out").exists()


def test_subprocess_binary_data_file(env):
    (env / "data.bin").write_bytes(bytes(range(256)) * 4)
    _one_line(_attnkit("train", "--data.path=data.bin", "--out", "out", cwd=env), "looks binary")
    assert not (env / "out").exists()


@pytest.mark.skipif(shutil.which("attnkit") is None, reason="the attnkit script is not installed")
def test_console_script_on_a_truncated_checkpoint(run, env):
    _truncate(run / CKPT / "model.safetensors")
    before = snapshot(run)
    _one_line(_attnkit("sample", "run", cwd=env, script=True), "truncated or corrupt")
    _one_line(_attnkit("train", "--resume", "run", "--train.steps=4", cwd=env, script=True),
              "truncated or corrupt")
    assert snapshot(run) == before


def test_subprocess_planted_pickle(run, env):
    marker = env / "pwned"
    plant(run / CKPT / "optimizer.pt", marker)
    _one_line(_attnkit("train", "--resume", "run", "--train.steps=4", cwd=env), "refusing to load")
    assert not marker.exists()
