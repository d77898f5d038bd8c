"""Suite-wide settings.

Tests use tiny models, for which one thread is as fast as several and is not
slowed down by whatever else runs on the machine; results are also repeatable.
"""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """A scratch working directory with its own token cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A 1-layer, 32-wide character model of the built-in corpus, trained for 3 steps; shared
    by the whole session, so tests must not change it."""
    from attnkit.cli import main

    root = tmp_path_factory.mktemp("small-run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ATTNKIT_CACHE", str(root / "cache"))
        rc = main(["train", "--model.n_layers=1", "--model.d_model=32", "--model.n_heads=2",
                   "--model.context_length=32", "--train.batch_size=4", "--train.eval_batches=2",
                   "--train.steps=3", "--no-samples", "--out", str(root / "run")])
    assert rc == 0
    return root / "run"
