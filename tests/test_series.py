"""Time series as tokens: the Chronos tokenizer, series readers, the series task, forecast."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attnkit.cli import main
from attnkit.data.series import (
    EOS_ID,
    PAD_ID,
    SeriesTokenizer,
    fill_nans,
    kernelsynth,
    read_csv,
    read_series,
    window_batch,
)
from attnkit.errors import AttnkitError
from attnkit.train.task_series import check_horizon


def test_round_trip_within_half_a_bin():
    tok = SeriesTokenizer(4094)
    x = torch.tensor([[0.5, -3.0, 12.0, 7.25, 0.0, 100.0, -40.0]], dtype=torch.float64)
    scale = SeriesTokenizer.scale(x)
    ids = tok.encode(x, scale)
    assert ids.min() >= 2 and ids.max() <= tok.vocab_size - 1
    back = tok.decode(ids, scale)
    inside = (x / scale).abs() < 15
    err = (back - x).abs()[inside]
    assert (err <= tok.width / 2 * scale.item() + 1e-9).all()
    again = tok.encode(back, scale)  # bin centres land in their own bin
    assert torch.equal(again, ids)


def test_out_of_range_goes_to_end_bins_and_specials_decode_to_nan():
    tok = SeriesTokenizer(10, -1.0, 1.0)
    one = torch.ones(1, 1, dtype=torch.float64)
    ids = tok.encode(torch.tensor([[-5.0, 5.0]], dtype=torch.float64), one)
    assert ids.tolist() == [[2, 11]]
    out = tok.decode(torch.tensor([[PAD_ID, EOS_ID, 2]]), one)
    assert torch.isnan(out[0, :2]).all() and out[0, 2].item() == pytest.approx(-0.9)


def test_scale_of_zeros_is_one_and_tokenizer_saves(tmp_path):
    assert SeriesTokenizer.scale(torch.zeros(1, 5)).item() == 1.0
    tok = SeriesTokenizer(1022)
    tok.save(tmp_path / "tokenizer.json")
    assert SeriesTokenizer.load(tmp_path / "tokenizer.json") == tok
    assert tok.vocab_size == 1024
    (tmp_path / "other.json").write_text('{"kind": "char"}')
    with pytest.raises(AttnkitError, match="not a series tokenizer"):
        SeriesTokenizer.load(tmp_path / "other.json")


def test_kernelsynth_is_seeded():
    a, b, c = kernelsynth(3, 100, 1), kernelsynth(3, 100, 1), kernelsynth(3, 100, 2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert all(np.isfinite(x).all() and x.std() > 0 for x in a)


def test_csv_columns_and_npy(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("date,a,b\n2020-01,1,5\n2020-02,2,6\n2020-03,3,8\n")
    assert list(read_csv(p, None)) == ["a", "b"]  # the date column is skipped
    assert read_csv(p, "b")["b"].tolist() == [5, 6, 8]
    p.write_text("a,b\n1,5\n2,oops\n")  # a numeric column with a bad cell is not skipped
    with pytest.raises(AttnkitError, match="row 3, column 'b'"):
        read_csv(p, None)
    np.save(tmp_path / "s.npy", np.arange(10.0))
    assert read_series(str(tmp_path / "s.npy"))["s"].tolist() == list(range(10))


@pytest.mark.parametrize("body, column, match", [
    ("x\n1\noops\n3\n", "x", r"row 3, column 'x': 'oops' is not a number"),
    ("x\n4\n4\n4\n", "x", "constant"),
    ("x\n1\n\n3\n", "x", "missing values.*--data.nan=interpolate"),
    ("x\n1\n2\n", "y", "no column 'y'"),
])
def test_bad_csv_is_one_line(tmp_path, body, column, match):
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(AttnkitError, match=match) as e:
        read_csv(p, column)
    assert "\n" not in str(e.value) and "bad.csv" in str(e.value)


def test_nans_interpolate():
    out = fill_nans(np.array([np.nan, 1.0, np.nan, 3.0, np.nan]), "x", "interpolate")
    assert out.tolist() == [1.0, 1.0, 2.0, 3.0, 3.0]


def test_horizon_longer_than_context():
    assert check_horizon(24, 97) == 73
    with pytest.raises(AttnkitError, match="not shorter than the model's window"):
        check_horizon(97, 97)


def test_window_batch_is_a_pure_function_of_the_generator():
    tok = SeriesTokenizer(100)
    series = kernelsynth(4, 64, 0) + [np.arange(1.0, 10.0)]  # one shorter than the window
    a = window_batch(series, 16, 8, 12, tok, torch.Generator().manual_seed(3))
    b = window_batch(series, 16, 8, 12, tok, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (8, 16) and torch.equal(a[0][:, 1:], a[1][:, :-1].clamp(min=0))


@pytest.fixture(scope="module")
def series_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ser"
    assert main(["train", "recipes/series-synth.yaml", "--train.steps=4", "--train.batch_size=4",
                 "--train.eval_every=4", "--train.checkpoint_every=4", "--model.context_length=32",
                 "--model.d_model=16", "--model.n_layers=1", "--model.n_heads=2",
                 "--data.path=kernelsynth:8", "--data.horizon=8", "--out", str(out), "--force"]) == 0
    return out


def test_forecast_shapes_quantiles_and_fan_chart(series_run, tmp_path, capsys):
    from attnkit.commands.forecast import forecast, load_series_run

    run = load_series_run(series_run)
    history = kernelsynth(1, 80, 5)[0]
    fc = forecast(run, history, 6, 16, seed=1)
    assert fc["paths"].shape == (16, 6) and fc["q50"].shape == (6,)
    assert (fc["q10"] <= fc["q50"]).all() and (fc["q50"] <= fc["q90"]).all()
    assert np.array_equal(forecast(run, history, 6, 16, seed=1)["paths"], fc["paths"])
    np.save(tmp_path / "h.npy", history)
    out = tmp_path / "fc"
    assert main(["forecast", str(series_run), "--data", str(tmp_path / "h.npy"), "--horizon", "6",
                 "--samples", "8", "--out", str(out)]) == 0
    assert (out / "fan.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "forecast.json").read_text())
    assert len(saved["quantiles"]["0.5"]) == 6
    assert (out / "forecast.csv").read_text().splitlines()[0] == "step,q0.1,q0.5,q0.9"
    assert "q0.5" in capsys.readouterr().out


def test_forecast_errors(series_run, tmp_path, capsys):
    np.save(tmp_path / "h.npy", np.arange(50.0))
    assert main(["forecast", str(series_run), "--data", str(tmp_path / "h.npy"),
                 "--horizon", "40"]) == 2
    assert "not shorter than the model's window" in capsys.readouterr().err
    assert main(["forecast", str(tmp_path / "nope"), "--data", str(tmp_path / "h.npy")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_experiment_forecast_micro(tmp_path):
    from attnkit.experiments import forecast as exp

    results = exp.run(tmp_path / "exp", "micro", log=lambda _: None)
    assert set(results["scores"]) == {"co2", "elnino", "sunspots", "nile"}
    assert all(set(s) == {"attnkit", "seasonal naive", "ETS"} for s in results["scores"].values())
    assert (tmp_path / "exp" / "fan-co2.png").is_file()
    assert "| co2 | ETS |" in (tmp_path / "exp" / "report.md").read_text()


def test_metrics():
    from attnkit.experiments.forecast import mase, seasonal_naive, wql

    history = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    assert seasonal_naive(history, 4, 3).tolist() == [1.0, 2.0, 3.0, 1.0]
    truth = np.array([1.0, 2.0, 3.0])
    assert mase(truth, truth, np.arange(10.0), 1) == 0.0
    assert wql(truth, np.tile(truth, (9, 1))) == 0.0
    assert wql(truth, np.tile(truth + 1, (9, 1))) > 0
