"""A checkpoint never runs code: pickles planted in a run are refused, or never opened.

Each pickle below, when unpickled the ordinary way, makes a folder (``Planted`` of
tests/test_errors.py); ``test_the_plants_are_live_for_stock_dcp`` shows that PyTorch's own
distributed-checkpoint reader does run them. Every command that loads a run is then pointed at
a run holding them: resuming refuses with one documented line, the other commands never open the
files they are in, and the folder never appears.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import test_cli
import torch
import torch.distributed.checkpoint as dcp
from test_cli import cli, snapshot
from test_distributed import TINY as DIST_TINY
from test_distributed import torchrun_fails
from test_errors import Planted, is_documented, refused

from attnkit.cli import main
from attnkit.errors import AttnkitError
from attnkit.train.dcp_safe import (
    ALLOWED,
    DTYPES,
    SafePlanner,
    SafeReader,
    read_metadata_file,
)
from attnkit.train.distributed import load_extras

trained_run = test_cli.trained_run  # a single-file checkpoint, shared with test_cli
STEP = "checkpoints/step-000002"  # the last checkpoint of `sharded_run` and `seq2seq_run`


def _train(root: Path, name: str, *argv: str) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ATTNKIT_CACHE", str(root / "cache"))
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(k, raising=False)
        assert main(["train", *argv, "--no-samples", "--out", str(root / name)]) == 0
    return root / name


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory) -> Path:
    """A real FSDP checkpoint (DCP folder, training.pt), written by one process."""
    return _train(tmp_path_factory.mktemp("sharded"), "run", *DIST_TINY, "--train.steps=2",
                  "--train.checkpoint_every=2", "--train.eval_every=2", "--parallel", "fsdp")


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("seq2seq"), "run", "--model.family=seq2seq",
                  "--data.task=seq2seq", "--data.path=synthetic:reverse", "--model.d_model=32",
                  "--model.n_heads=2", "--model.n_encoder_layers=1", "--model.n_decoder_layers=1",
                  "--model.context_length=16", "--train.batch_size=8", "--train.eval_batches=2",
                  "--train.device=cpu", "--train.steps=2", "--train.eval_every=2")


def copy_run(source: Path, env: Path) -> Path:
    shutil.copytree(source, env / "run")
    return Path("run")


def evil(marker: Path) -> bytes:
    return pickle.dumps({"metadata": Planted(marker)})


def plant_metadata(ckpt: Path, marker: Path) -> None:
    (ckpt / "sharded").mkdir(exist_ok=True)
    (ckpt / "sharded" / ".metadata").write_bytes(evil(marker))


def plant_item(ckpt: Path, marker: Path, fqn: str = "optim.param_groups.0.lr",
               relative_path: str | None = None) -> None:
    """Point the DCP item ``fqn`` (a non-tensor value by default) of a genuine sharded
    checkpoint at a ``torch.save``d payload appended to its data file."""
    folder = ckpt / "sharded"
    metadata = read_metadata_file(folder / ".metadata")  # the genuine one, read safely
    key = next(k for k in metadata.storage_data if k.fqn == fqn)
    info = metadata.storage_data[key]
    payload = io.BytesIO()
    torch.save(Planted(marker), payload)
    data = folder / info.relative_path
    offset = data.stat().st_size
    with open(data, "ab") as f:
        f.write(payload.getvalue())
    metadata.storage_data[key] = dataclasses.replace(
        info, offset=offset, length=len(payload.getvalue()),
        relative_path=relative_path or info.relative_path)
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))


def plant_everywhere(ckpt: Path, marker: Path) -> None:
    """Every file of a checkpoint that holds pickles, replaced by one."""
    plant_metadata(ckpt, marker)
    for name in ("optimizer.pt", "training.pt", "sharded/__0_0.distcp"):
        (ckpt / name).write_bytes(evil(marker))


def test_the_plants_are_live_for_stock_dcp(sharded_run, tmp_path):
    """Without attnkit's reader, DCP runs both: the holes were real and the tests can see them."""
    marker = tmp_path / "pwned"
    run = shutil.copytree(sharded_run, tmp_path / "a")
    plant_metadata(run / STEP, marker)
    with contextlib.suppress(AttributeError):  # the payload runs, then DCP finds a dict
        dcp.FileSystemReader(run / STEP / "sharded").read_metadata()
    assert marker.exists()
    marker.rmdir()
    run = shutil.copytree(sharded_run, tmp_path / "b")
    plant_item(run / STEP, marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A state dict of one value reads just that item of the checkpoint.
        dcp.load({"optim": {"param_groups": [{"lr": 0.0}]}}, checkpoint_id=run / STEP / "sharded",
                 no_dist=True)
    assert marker.exists()


def test_the_safe_reader_reads_what_dcp_writes(sharded_run):
    """Every class in a genuine .metadata is allowed, and a non-tensor value reads back."""
    seen: set[tuple[str, str]] = set()

    class Logging(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    with open(sharded_run / STEP / "sharded" / ".metadata", "rb") as f:
        Logging(f).load()  # our own file, just written by the fixture
    assert seen and all(name in ALLOWED.get(module, ()) or (module == "torch" and name in DTYPES)
                        for module, name in seen)
    state = {"optim": {"param_groups": [{"lr": -1.0}]}}
    reader = SafeReader(sharded_run / STEP / "sharded")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled": one process is meant
        dcp.load(state, storage_reader=reader, planner=SafePlanner(reader), no_dist=True)
    assert state["optim"]["param_groups"][0]["lr"] > 0


@pytest.mark.parametrize("module, name", [("posix", "system"), ("builtins", "eval"),
                                          ("torch", "load"), ("torch.serialization", "load"),
                                          ("torch.distributed.checkpoint.metadata", "Metadata.x")])
def test_the_metadata_unpickler_names_what_it_refuses(tmp_path, module, name):
    """A global outside the allow-list is refused before it is looked up, let alone called."""
    path = tmp_path / ".metadata"
    path.write_bytes(f"c{module}\n{name}\n(S'echo pwned'\ntR.".encode())
    with pytest.raises(AttnkitError, match=f"checkpoint metadata \\({module}.{name}\\)"):
        read_metadata_file(path)


@pytest.mark.parametrize("parallel", ["fsdp", "none"])
def test_a_genuine_sharded_checkpoint_resumes(sharded_run, env, capsys, parallel):
    run = copy_run(sharded_run, env)
    rc, out, err = cli(capsys, "train", "--resume", run, "--train.steps=3", "--parallel", parallel,
                       "--no-samples")
    assert rc == 0, err
    assert "resumed" in out and "at step 2" in out


# ------------------------------------------------------------------ resuming refuses


RESUME = [
    # (id, the run, how it is damaged, --parallel, words of the refusal)
    ("metadata of a single-file run", "trained", "metadata", "auto",
     ["refusing to load run/checkpoints/step-000003/sharded/.metadata", "checkpoint metadata",
      "(posix.mkdir)", "could run code"]),
    ("metadata, fsdp in one process", "sharded", "metadata", "fsdp",
     ["refusing to load run/checkpoints/step-000002/sharded/.metadata", "could run code"]),
    ("metadata, no process group", "sharded", "metadata", "none",
     ["refusing to load run/checkpoints/step-000002/sharded/.metadata", "could run code"]),
    ("byte item, fsdp in one process", "sharded", "item", "fsdp",
     ["refusing to load run/checkpoints/step-000002/sharded/__0_0.distcp", "other than tensors"]),
    ("byte item, no process group", "sharded", "item", "none",
     ["refusing to load run/checkpoints/step-000002/sharded/__0_0.distcp", "other than tensors"]),
    ("tensor item", "sharded", "tensor", "fsdp",
     ["refusing to load run/checkpoints/step-000002/sharded", "other than tensors"]),
    ("data file outside the folder", "sharded", "outside", "fsdp",
     ["sharded/.metadata names the data file '../../../../etc/passwd', which is not in its folder"]),
    ("truncated metadata", "sharded", "truncated", "fsdp",
     ["cannot read run/checkpoints/step-000002/sharded/.metadata", "truncated or corrupt"]),
    ("no metadata", "sharded", "no metadata", "fsdp",
     ["run/checkpoints/step-000002/sharded has no .metadata"]),
    ("missing data file", "sharded", "no data", "fsdp",
     ["cannot read the sharded checkpoint run/checkpoints/step-000002/sharded",
      "No such file or directory", "resume from an earlier checkpoint"]),
]


@pytest.mark.parametrize("source, damage, parallel, words", [c[1:] for c in RESUME],
                         ids=[c[0] for c in RESUME])
def test_resume_refuses_a_tampered_sharded_checkpoint(request, env, capsys, source, damage,
                                                       parallel, words):
    run = copy_run(request.getfixturevalue(f"{source}_run"), env)
    ckpt = run / (STEP if source == "sharded" else "checkpoints/step-000003")
    marker = env / "pwned"
    folder = ckpt / "sharded"
    if damage == "metadata":
        plant_metadata(ckpt, marker)
    elif damage == "item":
        plant_item(ckpt, marker)
    elif damage == "tensor":
        plant_item(ckpt, marker, fqn="model.tok_emb.weight")
    elif damage == "outside":
        plant_item(ckpt, marker, relative_path="../../../../etc/passwd")
    elif damage == "truncated":
        data = (folder / ".metadata").read_bytes()
        (folder / ".metadata").write_bytes(data[: len(data) // 2])
    elif damage == "no metadata":
        (folder / ".metadata").unlink()
    else:
        (folder / "__0_0.distcp").unlink()
    before = snapshot(run)
    steps = 3 if source == "sharded" else 4  # one more than the checkpoint's
    refused(cli(capsys, "train", "--resume", run, f"--train.steps={steps}", "--parallel", parallel,
                "--no-samples"), *words)
    assert not marker.exists()
    assert snapshot(run) == before


def test_resume_refuses_a_planted_training_pt(sharded_run, env, capsys):
    run = copy_run(sharded_run, env)
    (run / STEP / "training.pt").write_bytes(evil(env / "pwned"))
    try:
        refused(cli(capsys, "train", "--resume", run, "--train.steps=3", "--no-samples"),
                "refusing to load run/checkpoints/step-000002/training.pt")
    finally:
        assert not (env / "pwned").exists()


def test_resume_of_a_sharded_checkpoint_without_training_pt(sharded_run, env, capsys):
    run = copy_run(sharded_run, env)
    (run / STEP / "training.pt").unlink()
    before = snapshot(run)
    refused(cli(capsys, "train", "--resume", run, "--train.steps=3", "--no-samples"),
            "run/checkpoints/step-000002 has no training.pt, so it cannot be resumed")
    assert snapshot(run) == before


def test_load_extras_refuses_a_planted_training_pt(sharded_run, tmp_path):
    ckpt = shutil.copytree(sharded_run / STEP, tmp_path / "ckpt")
    assert "rng_cpu" in load_extras(ckpt)
    (ckpt / "training.pt").write_bytes(evil(tmp_path / "pwned"))
    with pytest.raises(Exception, match="refusing to load .*training.pt: it holds pickled "
                                        "objects other than tensors"):
        load_extras(ckpt)
    assert not (tmp_path / "pwned").exists()


def test_resume_under_torchrun_refuses_planted_metadata(sharded_run, tmp_path):
    """Two ranks under torchrun: rank 0 says it once, and torchrun's summary shows the line."""
    run = shutil.copytree(sharded_run, tmp_path / "run")
    plant_metadata(run / STEP, tmp_path / "pwned")
    line, root_cause = torchrun_fails(tmp_path, "--resume", "run", "--parallel", "fsdp",
                                      "--train.steps=3", "--no-samples")
    assert line.startswith("error: refusing to load run/checkpoints/step-000002/sharded/.metadata")
    assert is_documented(line), line
    assert f"traceback : {line}" in root_cause
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ the other commands


def _serve(run, monkeypatch, capsys) -> tuple[int, str, str]:
    """`attnkit serve RUN` up to uvicorn, then one completion through the app it built."""
    uvicorn = pytest.importorskip("uvicorn")
    from fastapi.testclient import TestClient

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))
    result = cli(capsys, "serve", run)
    with TestClient(apps[0]) as client:
        r = client.post("/v1/completions", json={"prompt": "The ", "max_tokens": 3})
    assert r.status_code == 200, r.text
    return result


COMMANDS = {
    "sample": ["sample", "{run}", "--prompt", "The ", "--max-new-tokens", "5"],
    "inspect": ["inspect", "{run}", "--prompt", "The ", "--layer", "0", "--head", "0"],
    "convert --to-hf": ["convert", "{run}", "--to-hf", "exported"],
    "eval": ["eval", "{run}", "--limit", "4"],
    "serve": [],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_that_load_weights_never_open_the_pickles(command, request, env, capsys,
                                                           monkeypatch):
    """Only model.safetensors and JSON are read: every pickle-holding file is planted."""
    source = request.getfixturevalue("seq2seq_run" if command == "eval" else "sharded_run")
    run = copy_run(source, env)
    plant_everywhere(run / STEP, env / "pwned")
    if command == "serve":
        rc, _, err = _serve(run, monkeypatch, capsys)
    else:
        rc, _, err = cli(capsys, *[a.format(run=run) for a in COMMANDS[command]])
    assert rc == 0, err
    assert not (env / "pwned").exists()
