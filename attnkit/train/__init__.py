"""Training: the loop, the optimizer and its schedule, and the distributed wrapping."""

from attnkit.train.distributed import parallelize
from attnkit.train.optim import build_optimizer, lr_at
from attnkit.train.trainer import Trainer

__all__ = ["Trainer", "build_optimizer", "lr_at", "parallelize"]
