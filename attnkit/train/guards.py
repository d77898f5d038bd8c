"""Training guards: skip updates that would damage the weights, and stop a run that keeps
producing them.

A step whose loss or gradient norm is not finite is skipped (no optimizer update, the
data and schedule move on) and counted; ``max_bad_steps`` such steps in a row stop the
run, with the last checkpoint - written before the trouble began - left as it is. With
``spike_zscore`` > 0, a step whose loss lies more than that many standard deviations above
the mean of the last ``window`` accepted losses is skipped too (after ``warmup`` accepted
steps, so that the early fall of the loss is not mistaken for noise).

The guard's state travels in every checkpoint (``state.json``), so a resumed run makes
exactly the decisions the uninterrupted one would have made.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from attnkit.errors import AttnkitError


class TrainingDiverged(AttnkitError):
    """Raised when ``max_bad_steps`` steps in a row were not finite: the run is stopped."""


class Guard:
    def __init__(self, max_bad_steps: int, spike_zscore: float = 0.0, window: int = 50,
                 warmup: int = 20) -> None:
        self.max_bad_steps, self.spike_zscore = max_bad_steps, spike_zscore
        self.window, self.warmup = window, warmup
        self.history: deque[float] = deque(maxlen=window)  # recent accepted losses
        self.bad_in_a_row = 0
        self.skipped = {"non-finite": 0, "spike": 0}

    def check(self, loss: float, grad_norm: float | None) -> str | None:
        """Why this step's update must be skipped (``"non-finite"`` or ``"spike"``), or None.
        Records the decision; ``grad_norm`` None means it is not checked (fp16 loss scaling
        skips non-finite gradients itself)."""
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            self.bad_in_a_row += 1
            self.skipped["non-finite"] += 1
            return "non-finite"
        self.bad_in_a_row = 0
        if self.is_spike(loss):
            self.skipped["spike"] += 1
            return "spike"
        self.history.append(loss)
        return None

    def is_spike(self, loss: float) -> bool:
        if self.spike_zscore <= 0 or len(self.history) < self.warmup:
            return False
        mean = sum(self.history) / len(self.history)
        var = sum((h - mean) ** 2 for h in self.history) / (len(self.history) - 1)
        return (loss - mean) / max(math.sqrt(var), 1e-8) > self.spike_zscore

    def raise_if_hopeless(self, step: int, last_checkpoint: str | None, run_dir) -> None:
        """Stop the run once ``max_bad_steps`` steps in a row were non-finite."""
        if self.bad_in_a_row < self.max_bad_steps:
            return
        first = step - self.bad_in_a_row + 1
        kept = (f"the last good checkpoint {last_checkpoint} is intact; lower --train.lr or "
                f"raise --train.warmup_steps and resume with `attnkit train --resume {run_dir} "
                f"--train.lr=...`" if last_checkpoint else
                "no checkpoint was written yet; lower --train.lr or raise --train.warmup_steps")
        raise TrainingDiverged(f"the loss or gradients were not finite for {self.bad_in_a_row} steps "
                           f"in a row (steps {first}-{step}), so training stopped: {kept}")

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "bad_in_a_row": self.bad_in_a_row,
                "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = deque(state.get("history", []), maxlen=self.window)
        self.bad_in_a_row = int(state.get("bad_in_a_row", 0))
        self.skipped.update(state.get("skipped", {}))
