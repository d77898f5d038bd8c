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
