"""``attnkit inspect`` on an image model: the attention rollout on known inputs, then the
command end to end on a tiny ViT trained for 2 steps (pictures, numbers, refusals)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli import cli
from test_errors import refused

import attnkit
from attnkit.cli import main
from attnkit.data.images import image_to_tensor, load_images, open_image
from attnkit.viz.vision import attention_rollout, patch_relevance, upsample

# --- the rollout on known inputs ------------------------------------------------------------


def test_identity_attention_rolls_out_to_the_identity():
    T = 5
    eye = torch.eye(T).expand(3, T, T)  # (nh, T, T): every token attends to itself
    rollout = attention_rollout([eye, eye, eye, eye])
    assert rollout.shape == (4, T, T)
    torch.testing.assert_close(rollout, torch.eye(T).expand(4, T, T), atol=0, rtol=0)


def test_two_layers_three_tokens_by_hand():
    # layer 0: head 0 attends to token 0, head 1 to token 2; the heads' mean is [.5, 0, .5]
    # in every row; plus I, halved: [[.75, 0, .25], [.25, .5, .25], [.25, 0, .75]]
    first = torch.tensor([[1.0, 0, 0]] * 3)
    last = torch.tensor([[0, 0, 1.0]] * 3)
    layer0 = torch.stack([first, last])  # (nh=2, T, T)
    # layer 1, one head: every token attends to token 1; plus I, halved:
    # [[.5, .5, 0], [0, 1, 0], [0, .5, .5]]
    layer1 = torch.tensor([[[0, 1.0, 0]] * 3])  # (nh=1, T, T)
    rollout = attention_rollout([layer0, layer1])
    torch.testing.assert_close(rollout[0], torch.tensor([[0.75, 0, 0.25], [0.25, 0.5, 0.25],
                                                         [0.25, 0, 0.75]]))
    # R_1 = Ã_1 · Ã_0: row 0 = (row 0 + row 1 of Ã_0) / 2, row 1 = row 1, row 2 = (row 1 + row 2) / 2
    torch.testing.assert_close(rollout[1], torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25],
                                                         [0.25, 0.25, 0.5]]))


def test_rollout_rows_sum_to_one_for_any_attention():
    g = torch.Generator().manual_seed(0)
    maps = [torch.softmax(3 * torch.randn(2, 4, 7, 7, generator=g), -1) for _ in range(3)]
    rollout = attention_rollout(maps)  # batched: (L, B, T, T)
    assert rollout.shape == (3, 2, 7, 7)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(3, 2, 7), atol=1e-6, rtol=0)
    assert (rollout >= 0).all()


def test_patch_relevance_reads_the_class_row_or_the_mean_of_the_patch_rows():
    # 1 class token + a 2 x 2 grid; rows sum to 1
    r = torch.tensor([[0.2, 0.1, 0.2, 0.3, 0.2],
                      [0.0, 1.0, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 1.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 1.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(patch_relevance(r, "cls", 2), torch.tensor([[0.1, 0.2], [0.3, 0.2]]))
    patches = torch.tensor([[0.5, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.5, 0.5]])
    torch.testing.assert_close(patch_relevance(patches, "mean", 2),  # no class token
                               torch.tensor([[0.125, 0.375], [0.375, 0.125]]))
    with pytest.raises(ValueError):
        patch_relevance(patches, "cls", 2)
    big = upsample(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 4)  # each patch 2 x 2 pixels
    torch.testing.assert_close(big[2:, :2], torch.full((2, 2), 3.0))


# --- the command on a tiny ViT --------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_HELD_OUT = 360  # the digits' fixed split


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ATTNKIT_CACHE", str(root / "cache"))
        assert main(["train", "--model.family=vit", "--data.path=digits", "--train.steps=2",
                     "--train.batch_size=8", "--model.d_model=16", "--model.n_heads=2",
                     "--model.n_layers=2", "--out", str(root / "run")]) == 0
    return root / "run"


def is_image(path: Path) -> bool:
    if not (path.is_file() and path.read_bytes()[:8] == PNG_MAGIC):
        return False
    with Image.open(path) as im:
        im.verify()
        return im.size[0] > 200 and im.size[1] > 150


def softmax_of_logits(run: Path, pixels: torch.Tensor) -> list[float]:
    model = attnkit.load(run, device="cpu").model
    with torch.no_grad():
        logits, _ = model(pixels[None])
    return torch.softmax(logits[0], -1).tolist()


def written_files(out: str, folder: Path) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.startswith(f"  {folder}")]


def test_index_draws_the_prediction_and_the_rollout(vit_run, capsys, tmp_path):
    folder = tmp_path / "pics"
    rc, out, err = cli(capsys, "inspect", vit_run, "--index", "3", "--out", folder)
    assert rc == 0, err
    names = ["prediction.png", "attention_rollout.png", "inspect.json"]
    assert written_files(out, folder) == [str(folder / n) for n in names]  # one line per file
    assert is_image(folder / "prediction.png") and is_image(folder / "attention_rollout.png")

    data = json.loads((folder / "inspect.json").read_text())
    held_out = load_images("digits", 8, 0.1)
    expected = softmax_of_logits(vit_run, held_out.val_x[3])
    torch.testing.assert_close(torch.tensor(data["probabilities"]), torch.tensor(expected),
                               atol=1e-6, rtol=0)
    best = max(range(10), key=lambda i: expected[i])
    assert data["predicted"] == {"id": best, "label": str(best), "prob": pytest.approx(expected[best])}
    assert data["true"] == {"id": int(held_out.val_y[3]), "label": str(int(held_out.val_y[3]))}
    assert data["labels"] == [str(d) for d in range(10)] and data["index"] == 3
    assert f"predicted: {best} (p = {expected[best]:.3f}); true: {int(held_out.val_y[3])}" in out

    roll = data["rollout"]
    grids = torch.tensor(roll["grids"])
    assert roll["pool"] == "cls" and roll["grid"] == [4, 4] and grids.shape == (2, 4, 4)
    torch.testing.assert_close(grids.sum((-2, -1)), torch.ones(2), atol=1e-4, rtol=0)
    assert roll["combined"] == roll["grids"][-1]
    assert all(0 < m < 1 for m in roll["patch_mass"])  # the rest stays on the class token
    # the same numbers from the model's own attention maps
    model = attnkit.load(vit_run, device="cpu").model
    with torch.no_grad():
        maps = [m[0] for m in model.attention_maps(held_out.val_x[3][None])]
    cls_row = patch_relevance(attention_rollout(maps), "cls", 4)
    torch.testing.assert_close(grids, cls_row / cls_row.sum((-2, -1), keepdim=True), atol=1e-5, rtol=0)


def test_image_file_grey_or_colour_any_size(vit_run, capsys, tmp_path):
    digit = load_images("digits", 8, 0.1).val_x[0]  # (1, 8, 8) in [-1, 1]
    grey = tmp_path / "digit.png"
    Image.fromarray(((digit[0] + 1) * 127.5).round().byte().numpy(), mode="L").save(grey)
    colour = tmp_path / "photo.png"
    Image.new("RGB", (40, 24), (200, 30, 90)).save(colour)
    for path in (grey, colour):
        folder = tmp_path / path.stem
        rc, out, err = cli(capsys, "inspect", vit_run, "--image", path, "--out", folder)
        assert rc == 0, err
        assert is_image(folder / "prediction.png") and is_image(folder / "attention_rollout.png")
        data = json.loads((folder / "inspect.json").read_text())
        pixels = image_to_tensor(open_image(path), 8, 1)  # what the model reads
        torch.testing.assert_close(torch.tensor(data["probabilities"]),
                                   torch.tensor(softmax_of_logits(vit_run, pixels)), atol=1e-6, rtol=0)
        assert data["image"] == str(path) and data["index"] is None and data["true"] is None
        assert "predicted: " in out and "; true:" not in out


def test_default_out_is_the_run_folder(vit_run, capsys, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(vit_run, run)
    rc, out, err = cli(capsys, "inspect", run, "--index", "0")
    assert rc == 0, err
    assert is_image(run / "inspect" / "attention_rollout.png")


def test_mean_pooling_reads_the_mean_of_the_patch_rows(vit_run, capsys, tmp_path):
    from attnkit.config import config_from_dict
    from attnkit.models import build_model
    from attnkit.runs import write_json
    from attnkit.weights import save_checkpoint

    cfg = config_from_dict(json.loads((vit_run / "config.json").read_text()))
    cfg.model.pool = "mean"
    cfg.model.__post_init__()  # context_length: no class token now
    run = tmp_path / "mean"
    run.mkdir()
    write_json(run / "config.json", cfg.to_dict())
    shutil.copy(vit_run / "labels.json", run / "labels.json")
    torch.manual_seed(0)
    save_checkpoint(run, build_model(cfg.model), None, {"step": 0})
    rc, out, err = cli(capsys, "inspect", run, "--index", "1", "--out", tmp_path / "pics")
    assert rc == 0, err
    data = json.loads((tmp_path / "pics" / "inspect.json").read_text())
    assert data["rollout"]["pool"] == "mean" and "the mean of the patch tokens" in out
    # every row of the rollout sums to 1, so their mean over the patches does too
    torch.testing.assert_close(torch.tensor(data["rollout"]["patch_mass"]), torch.ones(2),
                               atol=1e-5, rtol=0)


def one_error_line(result: tuple[int, str, str], *words: str) -> str:
    """Exit 2, nothing on stdout, one documented ``error:`` line holding ``words``."""
    return refused(result, *words)


@pytest.mark.parametrize("argv, words", [
    (["--index", "0", "--image", "x.png"], ["--image and --index", "give one of them"]),
    ([], ["nothing to inspect", "--image FILE or --index N"]),
    (["--index", str(N_HELD_OUT)], [f"--index {N_HELD_OUT} is out of range",
                                    f"{N_HELD_OUT} held-out images", f"0 to {N_HELD_OUT - 1}"]),
    (["--index", "-1"], ["--index -1 is out of range"]),
    (["--image", "no-such.png"], ["image not found: no-such.png"]),
    (["--image", "."], ["is a folder"]),
    (["--image", "notes.png"], ["notes.png is not an image Pillow can read"]),
    (["--index", "0", "--prompt", "hi"], ["--prompt is for text models", "reads images"]),
    (["--embeddings"], ["--embeddings is for text models"]),
    (["--index", "0", "--layer", "0"], ["--layer is for text models"]),
    (["--index", "0", "--temperatures", "1"], ["--temperatures is for text models"]),
])
def test_vision_refusals_are_one_line_and_write_nothing(vit_run, capsys, argv, words,
                                                        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("notes.png").write_text("not a picture\n")
    one_error_line(cli(capsys, "inspect", vit_run, *argv, "--out", tmp_path / "pics"), *words)
    assert not (tmp_path / "pics").exists()


@pytest.mark.parametrize("flag, value", [("--image", "x.png"), ("--index", "0")])
def test_image_options_on_a_text_run_are_refused(small_run, capsys, tmp_path, flag, value):
    one_error_line(cli(capsys, "inspect", small_run, flag, value, "--out", tmp_path / "pics"),
                   f"{flag} is for image models", "reads text")
    assert not (tmp_path / "pics").exists()
