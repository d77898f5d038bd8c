"""Images for the vision Transformer: the built-in digits, your own folder, one image.

- ``digits`` (the default): scikit-learn's bundled 8 x 8 handwritten digits
  (``sklearn.datasets.load_digits``, 1,797 grey images of 0-9, inside the scikit-learn wheel;
  nothing is downloaded), split once: ``train_test_split(test_size=0.2, stratify=labels,
  random_state=0)``, 1,437 train / 360 test images.
- A folder with one subfolder per class (the ImageFolder convention): every file in a class
  folder must be an image Pillow reads (PNG, JPEG, ...; files whose names start with a dot
  are skipped), all of one mode (grey or RGB), each resized to ``model.image_size``; a
  stratified held-out split of ``data.val_fraction`` of each class (seeded, fixed).

Pixels become floats in [0, 1], then ``(x - 0.5) / 0.5``: values in [-1, 1], as ViT's
image processors do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attnkit.errors import AttnkitError

BUILTIN_IMAGES = ("digits",)
DIGITS_TEST_FRACTION = 0.2
SPLIT_SEED = 0
GREY_MODES = ("1", "L", "I", "I;16", "F", "LA")


@dataclass
class ImageSet:
    """Images (N, C, H, W) in [-1, 1] with class ids (N,), split; ``labels`` the class names."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    labels: list[str]
    source: str

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]


def normalize(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> [-1, 1], float32."""
    return (torch.as_tensor(pixels, dtype=torch.float32) - 0.5) / 0.5


def digits(image_size: int = 8) -> ImageSet:
    """scikit-learn's digits with the fixed split of the module doc, resized when
    ``image_size`` is not 8."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise AttnkitError("the digits need scikit-learn (pip install scikit-learn)") from None
    data = load_digits()
    x = data.images.astype(np.float32) / 16.0  # (1797, 8, 8), 0..16 -> 0..1
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)

    def images(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)[:, None]  # (N, 1, 8, 8)
        if image_size != 8:
            t = torch.nn.functional.interpolate(t, size=(image_size, image_size), mode="bilinear",
                                                align_corners=False)
        return normalize(t)

    return ImageSet(images(x_train), torch.from_numpy(y_train), images(x_test),
                    torch.from_numpy(y_test), [str(d) for d in range(10)], "digits")


def channels_of(mode: str) -> int:
    """1 for a grey Pillow mode, 3 for colour."""
    return 1 if mode in GREY_MODES else 3


def image_to_tensor(image, image_size: int, channels: int) -> torch.Tensor:
    """A Pillow image -> (channels, image_size, image_size) in [-1, 1]: converted to grey
    or RGB, resized (bilinear) to a square."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    a = np.asarray(image, dtype=np.float32) / 255.0
    a = a[None] if channels == 1 else a.transpose(2, 0, 1)  # (C, H, W)
    return normalize(a.copy())


def open_image(path: Path):
    """Pillow's image of ``path``, fully read, or a one-line error naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except UnidentifiedImageError:
        raise AttnkitError(f"{path} is not an image Pillow can read (save it as PNG or JPEG; in "
                           f"an image folder, remove it)") from None
    except (OSError, ValueError) as e:
        raise AttnkitError(f"cannot read the image {path}: {getattr(e, 'strerror', None) or e} "
                           f"(the file is damaged; remove or replace it)") from None


def image_folder(path: str | Path, image_size: int, val_fraction: float) -> ImageSet:
    """The images of ``path``/CLASS/* with the stratified split of the module doc."""
    root = Path(path)
    if not root.is_dir():
        raise AttnkitError(f"image folder not found: {root} (give a folder with one subfolder of "
                           f"images per class, or data.path=digits)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise AttnkitError(f"{root} has {len(classes)} class folder(s); image classification needs "
                           f"at least 2 (one subfolder of images per class)")
    files: list[tuple[Path, int]] = []
    for label, folder in enumerate(classes):
        found = sorted(f for f in folder.iterdir() if not f.name.startswith("."))
        if not found:
            raise AttnkitError(f"class '{folder.name}' ({folder}) has no images (add some, or "
                               f"remove the folder)")
        for f in found:
            if f.is_dir():
                raise AttnkitError(f"{f} is a folder inside class '{folder.name}' (class folders "
                                   f"hold image files only)")
            files.append((f, label))
    first_mode, first_file = None, None
    pixels, ids = [], []
    for f, label in files:
        image = open_image(f)
        kind = "grey" if channels_of(image.mode) == 1 else "RGB"
        if first_mode is None:
            first_mode, first_file = kind, f
        elif kind != first_mode:
            raise AttnkitError(f"{root} mixes image modes: {first_file} is {first_mode} but {f} is "
                               f"{kind} (convert them all to one mode)")
        pixels.append(image_to_tensor(image, image_size, channels_of(image.mode)))
        ids.append(label)
    x, y = torch.stack(pixels), torch.tensor(ids)
    train, val = stratified_split(y, val_fraction, where=root)
    return ImageSet(x[train], y[train], x[val], y[val], [c.name for c in classes], str(root))


def stratified_split(y: torch.Tensor, val_fraction: float, where) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices: ``val_fraction`` of each class (at least one image of every class
    with two or more) held out, chosen by a fixed seed."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, val = [], []
    for label in torch.unique(y).tolist():
        rows = (y == label).nonzero()[:, 0].numpy()
        rng.shuffle(rows)
        n_val = min(len(rows) - 1, max(1, round(val_fraction * len(rows)))) if len(rows) > 1 else 0
        val += rows[:n_val].tolist()
        train += rows[n_val:].tolist()
    if not val:
        raise AttnkitError(f"{where} has too few images to hold any out (add images: a class "
                           f"needs two or more)")
    return torch.tensor(sorted(train)), torch.tensor(sorted(val))


def load_images(path: str, image_size: int, val_fraction: float) -> ImageSet:
    """``digits`` (also the default ``pydoc``, which is text) or an image folder."""
    if path in ("digits", "pydoc"):
        return digits(image_size)
    return image_folder(path, image_size, val_fraction)
