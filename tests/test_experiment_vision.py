"""``attnkit experiment vision``: the ViT beside logistic regression, an SVM and a CNN on the
digits, at the micro preset (seconds): every output written, the numbers well-formed, the
baselines far above chance, the ViT row read from a real training run, re-runs skipped."""

from __future__ import annotations

import json
import math

import pytest
import torch

import attnkit
from attnkit.cli import main
from attnkit.config import load_recipe
from attnkit.data.images import digits
from attnkit.errors import AttnkitError
from attnkit.experiments import vision

NAMES = ["vit", "logreg", "svm", "cnn"]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "vision"
    lines: list[str] = []
    return out, vision.run(out, "micro", lines.append, device="cpu"), lines


def test_writes_the_table_results_and_plot(micro):
    out, results, lines = micro
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "vision" and saved["preset"] == "micro"
    assert [m["name"] for m in saved["models"]] == NAMES
    assert saved["plots"] == ["vision.png"]
    png = (out / "vision.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    report = (out / "report.md").read_text()
    assert "(vision.png)" in report
    printed = next(line for line in lines if line.startswith("| model |"))
    assert printed in report  # the printed table is the report's
    for m in saved["models"]:
        assert f"| {m['model']} | {m['accuracy']:.4f} |" in printed


def test_every_accuracy_is_a_fraction_and_the_baselines_beat_chance(micro):
    _, results, _ = micro
    assert results["chance"] == pytest.approx(0.1)
    for m in results["models"]:
        assert isinstance(m["accuracy"], float) and 0.0 <= m["accuracy"] <= 1.0
        assert math.isfinite(m["train_s"]) and m["train_s"] >= 0
        assert isinstance(m["params"], int) and m["params"] > 0 and m["params_counted"]
    by = {m["name"]: m for m in results["models"]}
    assert by["logreg"]["accuracy"] > 0.9 and by["logreg"]["converged"]
    assert by["svm"]["accuracy"] > 0.9
    assert by["cnn"]["accuracy"] > 0.3  # one epoch at micro size
    assert by["logreg"]["params"] == 10 * 64 + 10
    n_sv = by["svm"]["n_support_vectors"]
    assert by["svm"]["params"] == n_sv * 64 + n_sv * 9 + 45  # 10 classes: 9 dual coefs, 45 pairs
    cnn = vision.SmallCNN(1, 10, 8, vision.PRESETS["micro"].cnn_widths)
    assert by["cnn"]["params"] == sum(p.numel() for p in cnn.parameters())


def test_the_vit_row_comes_from_its_trained_run(micro):
    out, results, _ = micro
    vit = results["models"][0]
    run_dir = out / "trials" / "vit"
    assert vit["spec"]["model"] == load_recipe("vit-digits")["model"]  # the recipe's model
    assert vit["steps"] == vision.PRESETS["micro"].vit_steps
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in logged if "accuracy" in r][-1]
    assert final["step"] == vit["steps"] and final["accuracy"] == pytest.approx(vit["accuracy"],
                                                                                abs=1e-5)
    loaded = attnkit.load(run_dir, device="cpu")  # the checkpoint, scored again here
    assert vit["params"] == sum(p.numel() for p in loaded.model.parameters())
    data = digits()
    with torch.no_grad():
        logits, _ = loaded.model(data.val_x)
    assert (logits.argmax(-1) == data.val_y).float().mean().item() == pytest.approx(vit["accuracy"])


def test_rerunning_skips_every_model_and_the_cli_prints_the_table(micro, capsys):
    out, first, _ = micro
    assert main(["experiment", "vision", "--micro", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    heads = [line for line in printed.splitlines() if line.startswith(("trial ", "baseline "))]
    assert len(heads) == 4 and all("done already" in line for line in heads)
    assert "| model | test accuracy | training time (s) |" in printed
    assert "done: vision (micro)" in printed
    again = json.loads((out / "results.json").read_text())
    assert [m["accuracy"] for m in again["models"]] == [m["accuracy"] for m in first["models"]]


def test_a_baseline_recorded_with_other_settings_is_refused(micro, tmp_path):
    out, _, _ = micro
    record = json.loads((out / "baselines" / "svm.json").read_text())
    record["spec"]["C"] = 10.0
    copy = tmp_path / "vision"
    (copy / "baselines").mkdir(parents=True)
    (copy / "experiment.json").write_text((out / "experiment.json").read_text())
    (copy / "baselines" / "svm.json").write_text(json.dumps(record))
    data = digits()
    with pytest.raises(AttnkitError, match="svm.json was fitted with other settings"):
        vision.run_baselines(vision.PRESETS["micro"], data, 1337, "cpu", copy, lambda s: None)


@pytest.mark.slow
def test_quick_preset_through_the_cli(tmp_path, capsys):
    out = tmp_path / "vision-quick"
    assert main(["experiment", "vision", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    assert "| ViT |" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    by = {m["name"]: m for m in results["models"]}
    assert by["vit"]["steps"] == vision.PRESETS["quick"].vit_steps
    assert by["logreg"]["accuracy"] > 0.9 and by["cnn"]["accuracy"] > 0.9
    assert by["vit"]["accuracy"] > 0.3  # far above chance (0.1) even at this short budget
