"""The vision Transformer: patches, positions, the model, its data and its training task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import cli
from test_errors import error_line
from torch import nn

import attnkit
from attnkit.config import VisionConfig
from attnkit.data.images import digits, image_folder
from attnkit.errors import AttnkitError
from attnkit.models import build_model
from attnkit.nn.patch import PatchEmbedding, patchify, sinusoid_table_2d
from attnkit.train.task_base import confusion_report
from attnkit.train.task_image import shift

TINY = ["--model.family=vit", "--model.d_model=32", "--model.n_heads=2", "--model.n_layers=2",
        "--train.batch_size=16", "--train.eval_every=1000", "--train.log_every=1000",
        "--train.samples=0"]


# ------------------------------------------------------------------ patches and positions


def test_patches_are_row_major_and_the_projection_is_a_strided_convolution():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 12, 8)
    patches = patchify(images, 4)  # (B, 3 * 2 patches, 3 * 4 * 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(patches[1, 1], images[1, :, 0:4, 4:8].reshape(-1))  # row 0, column 1
    assert torch.equal(patches[0, 4], images[0, :, 8:12, 0:4].reshape(-1))  # row 2, column 0
    embed = PatchEmbedding(3, 4, 16)
    conv = nn.Conv2d(3, 16, 4, stride=4)
    with torch.no_grad():
        conv.weight.copy_(embed.proj.weight.view(16, 3, 4, 4))
        conv.bias.copy_(embed.proj.bias)
    out = embed(images)  # (B, N, D)
    assert out.shape == (2, 6, 16)
    torch.testing.assert_close(out, conv(images).flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        embed(torch.randn(1, 3, 10, 8))


def test_2d_sinusoids_tell_rows_from_columns():
    table = sinusoid_table_2d(4, 16)  # (16 patches, 16)
    assert table.shape == (16, 16)
    assert torch.equal(table[1, :8], table[0, :8])  # same row: the row half agrees
    assert not torch.equal(table[1, 8:], table[0, 8:])  # the column half does not
    assert torch.equal(table[4, 8:], table[0, 8:])  # same column
    assert len({tuple(r) for r in table.tolist()}) == 16  # every patch its own position


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "none"])
def test_the_vit_classifies_a_batch_and_shows_its_attention(pool, pos):
    torch.manual_seed(0)
    cfg = VisionConfig(image_size=8, patch_size=2, channels=3, n_labels=4, d_model=16, n_heads=2,
                       n_layers=2, pool=pool, pos=pos)
    assert cfg.context_length == 16 + (pool == "cls")
    model = build_model(cfg).eval()
    assert model.abilities.images and model.abilities.classifies and not model.abilities.generates
    x, y = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    logits, loss = model(x, labels=y)
    assert logits.shape == (5, 4) and loss.ndim == 0
    torch.testing.assert_close(loss, nn.functional.cross_entropy(logits, y))
    assert model(x)[1] is None
    maps = model.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (5, 2, cfg.context_length, cfg.context_length)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(5, 2, cfg.context_length))
    assert "vit, 2 layers" in model.describe() and "2x2 patches (16)" in model.describe()


@pytest.mark.parametrize("knobs, words", [
    ({"patch_size": 3}, "model.patch_size=3 does not divide model.image_size=8 (choose one of 1, 2, 4, 8)"),
    ({"pos": "rope"}, "model.pos=rope is not for images"),
    ({"channels": 2}, "model.channels must be 1 (grey), 3 (RGB) or 0"),
    ({"n_labels": 1}, "model.n_labels must be 0"),
])
def test_vision_config_refuses_what_cannot_be_built(knobs, words):
    with pytest.raises(AttnkitError, match=words.replace("(", r"\(").replace(")", r"\)")):
        VisionConfig(**knobs)


def test_accelerated_vit_equals_the_plain_one():
    from attnkit.backends import accelerate

    torch.manual_seed(0)
    cfg = VisionConfig(image_size=16, patch_size=2, channels=1, n_labels=3, d_model=384, n_heads=6,
                       n_layers=1)
    plain = build_model(cfg)
    fast = accelerate(build_model(cfg), purpose="train")
    fast.load_state_dict(plain.state_dict())
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 1])
    (a, la), (b, lb) = plain(x, labels=y), fast(x, labels=y)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    la.backward()
    lb.backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------ data


def test_the_digits_split_is_fixed_and_stratified():
    a, b = digits(), digits()
    assert (len(a.train_y), len(a.val_y)) == (1437, 360)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert a.val_y.bincount().tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]
    assert a.train_x.shape[1:] == (1, 8, 8) and a.train_x.min() == -1 and a.train_x.max() == 1
    assert digits(16).val_x.shape[1:] == (1, 16, 16)


def bars(root, n: int = 12, size: int = 12, mode: str = "L", seed: int = 0):
    """A separable image set, ``n`` noisy images per class: horizontal stripes, vertical
    stripes or a checkerboard, each at a random phase (every patch shows its class)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    for name in ("horizontal", "vertical", "square"):
        (root / name).mkdir(parents=True)
        for i in range(n):
            phase = rng.integers(0, 2)
            lines = {"horizontal": rows, "vertical": cols, "square": rows + cols}[name]
            a = np.where((lines + phase) % 2 == 0, 220, 30) + rng.integers(0, 35, (size, size))
            Image.fromarray(a.astype(np.uint8), "L").convert(mode).save(root / name / f"{i}.png")
    return root


def test_an_image_folder_is_read_resized_and_split_per_class(tmp_path):
    root = bars(tmp_path / "shapes", size=10)
    data = image_folder(root, 8, 0.25)
    assert data.labels == ["horizontal", "square", "vertical"]
    assert data.train_x.shape == (27, 1, 8, 8) and data.val_x.shape == (9, 1, 8, 8)
    assert data.val_y.bincount().tolist() == [3, 3, 3]
    again = image_folder(root, 8, 0.25)
    assert torch.equal(again.val_x, data.val_x)  # the split is fixed
    rgb = image_folder(bars(tmp_path / "rgb", n=3, mode="RGB"), 8, 0.34)
    assert rgb.channels == 3


@pytest.mark.parametrize("damage, words", [
    ("empty", "class 'square'"),
    ("text", "notes.txt is not an image Pillow can read"),
    ("mixed", "mixes image modes"),
    ("one class", "has 1 class folder(s)"),
])
def test_a_bad_image_folder_is_one_line_naming_it(tmp_path, capsys, damage, words):
    root = bars(tmp_path / "shapes", n=4)
    if damage == "empty":
        for f in (root / "square").iterdir():
            f.unlink()
    elif damage == "text":
        (root / "square" / "notes.txt").write_text("not a picture")
    elif damage == "mixed":
        Image.new("RGB", (12, 12)).save(root / "square" / "colour.png")
    else:
        for name in ("square", "vertical"):
            for f in (root / name).iterdir():
                f.unlink()
            (root / name).rmdir()
    rc, out, err = cli(capsys, "train", *TINY, f"--data.path={root}", "--train.steps=1",
                       "--out", tmp_path / "run")
    assert rc == 2 and not (tmp_path / "run").exists()
    error_line(err, words)


@pytest.mark.parametrize("argv, words", [
    (["--model.patch_size=3"], "does not divide model.image_size=8"),
    (["--model.pos=rope"], "model.pos=rope is not for images"),
    (["--model.channels=3"], "model.channels=3 but digits has 1"),
    (["--data.path=nowhere"], "image folder not found: nowhere"),
    (["--model.family=decoder", "--data.task=image"], "data.task=image does not fit model.family=decoder"),
])
def test_settings_that_do_not_fit_images_are_refused(tmp_path, capsys, argv, words):
    rc, _, err = cli(capsys, "train", *TINY, *argv, "--train.steps=1", "--out", tmp_path / "run")
    assert rc == 2 and not (tmp_path / "run").exists()
    error_line(err, words)


def test_shift_moves_each_image_and_fills_with_background():
    x = -torch.ones(64, 1, 4, 4)
    x[:, :, 1, 1] = 1.0
    moved = shift(x, 1, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and (moved == 1).sum(dim=(1, 2, 3)).eq(1).all()
    spots = {tuple((m[0] == 1).nonzero()[0].tolist()) for m in moved}
    assert spots == {(r, c) for r in (0, 1, 2) for c in (0, 1, 2)}


def test_the_confusion_report_counts_rows_as_truth():
    text = confusion_report(["cat", "dog"], torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]),
                            "test")
    lines = text.splitlines()
    assert lines[0] == "test accuracy 75.00% (3/4)"
    assert lines[3].split() == ["cat", "1", "1"] and lines[4].split() == ["dog", "0", "2"]


# ------------------------------------------------------------------ training


def test_a_tiny_vit_learns_a_separable_image_set_to_100_percent(tmp_path, capsys):
    root = bars(tmp_path / "shapes", n=16)
    rc, out, err = cli(capsys, "train", *TINY, f"--data.path={root}", "--model.image_size=12",
                       "--model.patch_size=3", "--train.steps=150", "--train.lr=3e-3",
                       "--data.val_fraction=0.25", "--out", tmp_path / "run")
    assert rc == 0, err
    assert "test accuracy 100.00% (12/12)" in out
    assert "confusion matrix (rows: true class, columns: predicted)" in out
    run = attnkit.load(tmp_path / "run")
    assert run.tokenizer is None and run.labels == ["horizontal", "square", "vertical"]
    assert not (tmp_path / "run" / "tokenizer.json").exists()
    assert run.config.model.channels == 1 and run.config.model.n_labels == 3
    metrics = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["accuracy"] == 1.0


def test_resuming_a_vit_run_continues_it_exactly(tmp_path, capsys):
    args = ["train", *TINY, "--model.dropout=0.1", "--data.augment=1", "--train.eval_every=2",
            "--train.checkpoint_every=2"]
    assert cli(capsys, *args, "--train.steps=4", "--out", tmp_path / "whole")[0] == 0
    assert cli(capsys, *args, "--train.steps=2", "--out", tmp_path / "part")[0] == 0
    rc, out, err = cli(capsys, "train", "--resume", tmp_path / "part", "--train.steps=4")
    assert rc == 0 and "resumed" in out, err
    a, b = attnkit.load(tmp_path / "whole").model, attnkit.load(tmp_path / "part").model
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_the_digits_recipe_reaches_98_percent(tmp_path, capsys):
    rc, out, err = cli(capsys, "train", "vit-digits", "--out", tmp_path / "run")
    assert rc == 0, err
    line = next(x for x in out.splitlines() if x.startswith("test accuracy"))
    assert float(line.split()[2].rstrip("%")) >= 98.0, line
