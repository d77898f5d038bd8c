"""``attnkit experiment``: the power-law fitter, the recall task, and every experiment at its
micro preset (seconds each): complete outputs, diverged trials recorded, re-runs resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import attnkit
from attnkit.cli import main
from attnkit.errors import AttnkitError
from attnkit.experiments import ablation, long_range, parallelism, scaling
from attnkit.experiments.common import Trial, run_trials
from attnkit.experiments.fit import fit_power_law
from attnkit.train.guards import TrainingDiverged

# --- the fitter ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_a_known_exponent(seed):
    rng = np.random.default_rng(seed)
    n = np.geomspace(1e3, 1e7, 10)
    loss = (5 * n ** -0.3 + 1.2) * np.exp(rng.normal(0, 0.003, n.size))
    fit = fit_power_law(n, loss)
    assert abs(fit.alpha - 0.3) < 0.03
    assert abs(fit.c - 1.2) < 0.05
    assert fit.r2 > 0.99 and fit.rmse < 0.01
    assert np.allclose(fit(n), loss, rtol=0.01)


def test_fit_of_a_pure_power_law_finds_no_floor():
    n = np.geomspace(1e2, 1e6, 6)
    fit = fit_power_law(n, 3 * n ** -0.5)
    assert abs(fit.alpha - 0.5) < 1e-3 and fit.c < 1e-3


def test_fit_needs_three_points():
    with pytest.raises(ValueError, match="at least 3"):
        fit_power_law([1e3, 1e4], [2.0, 1.5])


# --- the recall task ----------------------------------------------------------------------

def test_recall_probes_put_the_key_exactly_d_positions_before_the_query():
    T = 32
    for gap in long_range.gaps_for(T):
        windows, keys = long_range.probe_windows(T, gap, 5, seed=0)
        for w, k in zip(windows, keys):
            assert len(w) == T and w[-1] == "=" and w[-1 - gap] == k
            assert not any(c.isupper() for c in w[-gap:])  # no other key in between
    assert long_range.gaps_for(T)[-1] == T - 1


def test_recall_text_is_examples_of_key_filler_query_answer():
    for line in long_range.recall_text(2000, 20, seed=0).splitlines():
        probe, answer = line.split("=")
        assert answer == probe[0] and probe[0].isupper() and probe[1:].islower() or probe[1:] == ""
        assert 1 <= len(probe) <= 20


# --- the experiments at micro size --------------------------------------------------------

def _run(module, out: Path, lines: list[str] | None = None) -> dict:
    log = (lines if lines is not None else []).append
    return module.run(out, "micro", log, device="cpu")


def _check_outputs(out: Path, results: dict, name: str) -> str:
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == name and saved["preset"] == "micro"
    assert saved["plots"] == results["plots"] and results["plots"]
    for png in results["plots"]:
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    report = (out / "report.md").read_text()
    for png in results["plots"]:
        assert f"({png})" in report
    for trial in results["trials"]:
        run_dir = out / "trials" / trial["name"]
        assert (run_dir / "trial.json").exists() and (run_dir / "config.json").exists()
    return report


@pytest.fixture(scope="module")
def scaling_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "scaling"
    lines: list[str] = []
    return out, _run(scaling, out, lines), lines


def test_scaling_fits_both_architectures_and_reports_the_exponents(scaling_run):
    out, results, lines = scaling_run
    report = _check_outputs(out, results, "scaling")
    assert set(results["fits"]) == {"transformer", "lstm"}
    for arch, fit in results["fits"].items():
        trials = [t for t in results["trials"] if t["arch"] == arch]
        assert len(trials) >= 5
        sizes = [t["non_embedding_params"] for t in trials]
        assert max(sizes) / min(sizes) >= 25
        assert f"{fit['alpha']:.3f}" in report and f"{fit['r2']:.3f}" in report
        assert all(t["flops"] == 6 * t["non_embedding_params"] * results["tokens_per_trial"]
                   for t in trials)
    assert any(line.startswith("trial 1/10: transformer") for line in lines)
    # matched sizes: each LSTM within 5% of its Transformer
    tr = [t for t in results["trials"] if t["arch"] == "transformer"]
    ls = [t for t in results["trials"] if t["arch"] == "lstm"]
    for a, b in zip(tr, ls):
        assert abs(a["non_embedding_params"] - b["non_embedding_params"]) / a["non_embedding_params"] < 0.05


def test_a_trial_is_an_ordinary_run_that_loads(scaling_run):
    out, results, _ = scaling_run
    for trial in (results["trials"][0], results["trials"][-1]):
        run = attnkit.load(out / "trials" / trial["name"], device="cpu")
        assert run.model.cfg.family == ("decoder" if trial["arch"] == "transformer" else "lstm")
        assert run.generate("The ", max_new_tokens=5, temperature=0.0)


def test_rerunning_skips_finished_trials_and_resumes_unfinished_ones(scaling_run):
    out, first, _ = scaling_run
    unfinished = out / "trials" / first["trials"][2]["name"]
    (unfinished / "trial.json").unlink()  # it has a checkpoint but no recorded outcome
    lines: list[str] = []
    second = _run(scaling, out, lines)
    heads = [line for line in lines if line.startswith("trial ")]
    assert len(heads) == 10
    assert sum("done already" in line for line in heads) == 9
    assert "(resuming)" in heads[2]
    assert second["fits"]["lstm"] == first["fits"]["lstm"]
    assert second["trials"][2]["val_loss"] == pytest.approx(first["trials"][2]["val_loss"], abs=1e-6)


def test_an_output_folder_holds_one_experiment_and_preset(scaling_run):
    out, _, _ = scaling_run
    with pytest.raises(AttnkitError, match="holds the micro preset of 'scaling'"):
        ablation.run(out, "micro", lambda s: None, device="cpu")


def test_long_range_measures_accuracy_per_gap_for_both(tmp_path):
    out = tmp_path / "long-range"
    results = _run(long_range, out)
    report = _check_outputs(out, results, "long-range")
    assert [t["arch"] for t in results["trials"]] == ["transformer", "lstm"]
    a, b = (t["non_embedding_params"] for t in results["trials"])
    assert abs(a - b) / a < 0.1
    for t in results["trials"]:
        assert t["gaps"] == results["gaps"] and len(t["accuracy"]) == len(results["gaps"])
        assert all(0.0 <= x <= 1.0 for x in t["accuracy"])
    assert results["gaps"][-1] == long_range.PRESETS["micro"].context_length - 1
    assert "| gap d |" in report


def test_parallelism_times_both_architectures_at_each_length(tmp_path):
    out = tmp_path / "parallelism"
    results = _run(parallelism, out)
    report = _check_outputs(out, results, "parallelism")
    p = parallelism.PRESETS["micro"]
    assert len(results["trials"]) == 2 * len(p.lengths)
    for t in results["trials"]:
        assert t["step_s"] > 0 and t["tokens_per_s"] > 0 and len(t["step_times"]) == p.timed_steps
        assert t["T"] * t["batch_size"] == p.tokens_per_step
    assert "ms/step" in report


def test_ablation_covers_stability_and_every_variant(tmp_path):
    out = tmp_path / "ablation"
    results = _run(ablation, out)
    report = _check_outputs(out, results, "ablation")
    variants = {t["variant"] for t in results["trials"] if t["part"] == "variant"}
    assert variants == set(ablation.VARIANTS)
    stab = [t for t in results["trials"] if t["part"] == "stability"]
    assert {t["norm_position"] for t in stab} == {"pre", "post"}
    assert {t["warmup_steps"] for t in stab} == {0, ablation.PRESETS["micro"].warmup_steps}
    assert all(t["status"] in ("ok", "stalled", "diverged") for t in results["trials"])
    assert results["unigram_loss"] > 0 and "Unigram baseline" in report
    swiglu = next(t for t in results["trials"] if t.get("variant") == "swiglu")
    assert swiglu["ffn"] == "swiglu"


def test_a_diverged_trial_is_recorded_and_the_experiment_goes_on(tmp_path):
    config = {"model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "context_length": 16},
              "train": {"steps": 2, "batch_size": 2, "eval_batches": 1, "device": "cpu"}}
    trials = [Trial("bad", "bad", config, {"arch": "transformer"}),
              Trial("good", "good", config, {"arch": "transformer"})]

    def body(trainer, trial):
        if trial.name == "bad":
            raise TrainingDiverged("the loss or gradients were not finite for 5 steps in a row")
        return {"val_loss": 1.0}

    lines: list[str] = []
    records = run_trials(trials, tmp_path, lines.append, body)
    assert [r["status"] for r in records] == ["diverged", "ok"]
    assert records[0]["val_loss"] is None and "not finite" in records[0]["error"]
    assert json.loads((tmp_path / "trials" / "bad" / "trial.json").read_text())["status"] == "diverged"
    again = run_trials(trials, tmp_path, lines.append, body)  # recorded: not retried
    assert [r["status"] for r in again] == ["diverged", "ok"]


# --- the command line ---------------------------------------------------------------------

def test_cli_runs_an_experiment(tmp_path, capsys):
    out = tmp_path / "lr"
    assert main(["experiment", "long-range", "--micro", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "trial 2/2: LSTM" in printed and "done: long-range (micro)" in printed
    assert (out / "report.md").exists()


def test_cli_rejects_an_unknown_experiment(capsys):
    assert main(["experiment", "scalin", "--micro"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'scaling'?" in err
