"""Image classification (``data.task=image``) for the vision Transformer: the built-in digits
or an image folder (:mod:`attnkit.data.images`). Every batch is a pure function of
``(seed, step, micro, split)``, so a resumed run sees the batches of an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attnkit.config import RunConfig, VisionConfig
from attnkit.data import batch_generator
from attnkit.data.images import load_images
from attnkit.errors import AttnkitError
from attnkit.runs import read_labels, save_labels
from attnkit.train.task_base import confusion_report, predictions


class ImageTask:
    """Classify images: random training images per batch (with ``data.augment``, each
    shifted by up to that many pixels, zeros filling in), the whole held-out split to
    evaluate."""

    tokenizer = None  # images need none; the run folder has no tokenizer.json

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool) -> None:
        if not isinstance(cfg.model, VisionConfig):
            raise AttnkitError(f"data.task=image trains a vision Transformer, but model.family is "
                               f"{cfg.model.family} (add --model.family=vit)")
        self.cfg = cfg
        m = cfg.model
        self.data = load_images(cfg.data.path, m.image_size, cfg.data.val_fraction)
        if resume and read_labels(run_dir) != self.data.labels:
            raise AttnkitError(f"{cfg.data.path} has other classes than the run was trained on "
                               f"(resume with the same data)")
        for name, found in (("n_labels", len(self.data.labels)), ("channels", self.data.channels)):
            if getattr(m, name) == 0:
                setattr(m, name, found)
            elif getattr(m, name) != found:
                raise AttnkitError(f"model.{name}={getattr(m, name)} but {self.data.source} has "
                                   f"{found} (leave model.{name} at 0 to match the data)")
        if not resume:
            save_labels(run_dir, self.data.labels)

    def describe(self) -> str:
        d, m = self.data, self.cfg.model
        shift = f", shifts of up to {self.cfg.data.augment} px" if self.cfg.data.augment else ""
        return (f"data: {d.source} | images {m.image_size}x{m.image_size}x{d.channels}, "
                f"{len(d.labels)} classes{shift} | {len(d.train_y):,} train / {len(d.val_y):,} "
                f"held-out images")

    def batch(self, split: str, step: int, micro: int, batch_size: int,
              device: torch.device) -> dict[str, torch.Tensor]:
        x, y = (self.data.train_x, self.data.train_y) if split == "train" else \
            (self.data.val_x, self.data.val_y)
        g = batch_generator(self.cfg.train.seed, step, micro, split)
        rows = torch.randint(len(y), (batch_size,), generator=g)
        images = x[rows]
        if split == "train" and self.cfg.data.augment:
            images = shift(images, self.cfg.data.augment, g)
        return {"pixel_values": images.to(device), "labels": y[rows].to(device)}

    def tokens_in(self, batch: dict[str, torch.Tensor]) -> int:
        """Patch tokens (the progress line's tok/s)."""
        return len(batch["labels"]) * self.cfg.model.context_length

    def evaluate(self, model, autocast, batch_size, n_batches, device) -> dict[str, float]:
        """Loss and accuracy over the whole held-out split."""
        logits = predictions(model, self.data.val_x, batch_size, device, autocast)
        loss = torch.nn.functional.cross_entropy(logits, self.data.val_y).item()
        accuracy = (logits.argmax(-1) == self.data.val_y).float().mean().item()
        return {"val_loss": loss, "accuracy": accuracy}

    def samples(self, model, n: int, max_new_tokens: int, seed: int) -> list[str]:
        """The model's class for the first ``n`` held-out images."""
        device = next(model.parameters()).device
        guesses = predictions(model, self.data.val_x[:n], n, device).argmax(-1).tolist()
        return [f"held-out image {i}: {self.data.labels[g]} (true: "
                f"{self.data.labels[int(self.data.val_y[i])]})" for i, g in enumerate(guesses)]

    def report(self, model) -> str:
        """Held-out accuracy and the confusion matrix."""
        device = next(model.parameters()).device
        guesses = predictions(model, self.data.val_x, 256, device).argmax(-1)
        return confusion_report(self.data.labels, self.data.val_y, guesses.cpu(), "test")


def shift(images: torch.Tensor, most: int, g: torch.Generator) -> torch.Tensor:
    """Each image (B, C, H, W) moved by its own random offset of up to ``most`` pixels in
    each direction; pixels that come in are the background (-1, black)."""
    B, _, H, W = images.shape
    pad = torch.nn.functional.pad(images, (most, most, most, most), value=-1.0)
    dy, dx = (torch.randint(2 * most + 1, (2, B), generator=g)).unbind(0)
    return torch.stack([pad[b, :, dy[b]:dy[b] + H, dx[b]:dx[b] + W] for b in range(B)])
