"""Modular arithmetic (``data.path=modular:OP``, ``data.task=modular``) and ``attnkit experiment
grokking``: the equations and their split, the tokens, held-out accuracy, the experiment's
outputs at its micro preset, and (slow) a small run that groks."""

from __future__ import annotations

import json

import pytest
import torch

from attnkit.config import config_from_dict
from attnkit.data.modular import (
    EQUALS,
    OPS,
    ModularSpec,
    accuracy,
    as_tensors,
    equations,
    parse_spec,
    split,
    vocabulary,
)
from attnkit.errors import AttnkitError
from attnkit.experiments import grokking
from attnkit.train.task_modular import ModularTask

# --- the equations and the split ------------------------------------------------------------

@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_every_pair_occurs_exactly_once_with_the_right_answer(op):
    spec = ModularSpec(op=op, p=11)
    eqs = equations(spec)
    pairs = [(a, b) for a, b, _ in eqs]
    want = [(a, b) for a in range(11) for b in range(11) if not (op == "div" and b == 0)]
    assert sorted(pairs) == want
    for a, b, c in eqs:
        if op == "add":
            assert c == (a + b) % 11
        elif op == "sub":
            assert c == (a - b) % 11
        elif op == "mul":
            assert c == (a * b) % 11
        else:
            assert (c * b) % 11 == a  # c = a / b
    assert all(0 <= c < 11 for _, _, c in eqs)


def test_the_split_is_disjoint_complete_sized_and_fixed_by_its_seed():
    spec = ModularSpec(op="add", p=13, train_fraction=0.3, seed=0)
    train, held_out = split(spec)
    assert len(train) == round(0.3 * 169) and len(train) + len(held_out) == 169
    assert not {(a, b) for a, b, _ in train} & {(a, b) for a, b, _ in held_out}
    assert sorted(train + held_out) == sorted(equations(spec))
    assert split(spec) == (train, held_out)  # the same seed, the same split
    other, _ = split(ModularSpec(op="add", p=13, train_fraction=0.3, seed=1))
    assert set(other) != set(train)


def test_specs_parse_with_defaults_and_reject_mistakes():
    assert parse_spec("modular:add") == ModularSpec("add", 97, 0.5, 0)
    assert parse_spec("modular:div:p=31:train=0.4:seed=2") == ModularSpec("div", 31, 0.4, 2)
    assert parse_spec(str(ModularSpec("sub", 7, 0.25, 3))) == ModularSpec("sub", 7, 0.25, 3)
    for bad, match in [("modular:pow", "unknown modular operation"), ("modular:add:q=3", "bad option"),
                       ("modular:add:p=x", "bad option value"), ("modular:div:p=12", "prime"),
                       ("modular:add:train=1", "train must be")]:
        with pytest.raises(AttnkitError, match=match):
            parse_spec(bad)


# --- tokens and accuracy --------------------------------------------------------------------

def test_an_example_is_a_op_b_equals_with_numbers_as_their_own_ids():
    spec = ModularSpec(op="sub", p=7)
    vocab = vocabulary(7)
    assert len(vocab) == len(set(vocab)) == 7 + len(OPS) + 1 and all(len(c) == 1 for c in vocab)
    x, y = as_tensors([(5, 3, 2), (1, 4, 4)], spec)
    assert x.shape == (2, 4) and y.tolist() == [2, 4]
    assert x[:, 0].tolist() == [5, 1] and x[:, 2].tolist() == [3, 4]
    assert {vocab[i] for i in x[:, 1].tolist()} == {"-"} and {vocab[i] for i in x[:, 3].tolist()} == {EQUALS}


def test_accuracy_counts_exact_answers_at_the_last_position():
    logits = torch.zeros(4, 4, 10)  # (N, T, V)
    for row, guess in enumerate([3, 1, 4, 1]):
        logits[row, -1, guess] = 1.0
        logits[row, 0, 9] = 5.0  # earlier positions do not count
    assert accuracy(logits, torch.tensor([3, 1, 4, 0])) == 0.75
    assert accuracy(logits[:, -1], torch.tensor([0, 0, 0, 0])) == 0.0


def _config(path="modular:add:p=11:train=0.5", **train):
    return config_from_dict({"model": {"family": "decoder", "d_model": 16, "n_layers": 1, "n_heads": 2,
                                       "context_length": 4},
                             "train": {"steps": 2, "batch_size": 8, "device": "cpu", **train},
                             "data": {"path": path}})


def test_the_task_scores_only_the_answer_and_evaluates_every_held_out_equation(tmp_path):
    cfg = _config()
    assert cfg.data.task == "modular"  # chosen from the path
    task = ModularTask(cfg, tmp_path, resume=False)
    batch = task.batch("train", 0, 0, 8, torch.device("cpu"))
    assert batch["input_ids"].shape == (8, 4)
    assert (batch["targets"][:, :3] == -100).all() and (batch["targets"][:, 3] >= 0).all()
    again = task.batch("train", 0, 0, 8, torch.device("cpu"))
    assert torch.equal(batch["input_ids"], again["input_ids"])  # a pure function of the step
    train_pairs = {tuple(r) for r in task.train_x[:, [0, 2]].tolist()}
    assert {tuple(r) for r in batch["input_ids"][:, [0, 2]].tolist()} <= train_pairs
    full = task.batch("train", 1, 0, 200, torch.device("cpu"))  # more rows than equations: cycles
    assert {tuple(r) for r in full["input_ids"][:, [0, 2]].tolist()} == train_pairs

    class Oracle(torch.nn.Module):  # answers every equation correctly
        def forward(self, input_ids, targets=None):
            logits = torch.zeros(*input_ids.shape, task.tokenizer.vocab_size)
            logits[:, -1] = torch.nn.functional.one_hot((input_ids[:, 0] + input_ids[:, 2]) % 11,
                                                        task.tokenizer.vocab_size).float() * 20
            return logits, None

    results = task.evaluate(Oracle(), None, 8, 1, torch.device("cpu"))
    assert results["val_accuracy"] == 1.0 and results["train_accuracy"] == 1.0
    assert results["val_loss"] < 1e-3
    assert len(task.val_y) + len(task.train_y) == 121


# --- the experiment -------------------------------------------------------------------------

def test_grokking_micro_writes_results_plot_and_report_and_skips_on_rerun(tmp_path):
    out = tmp_path / "grok"
    results = grokking.run(out, "micro", lambda s: None, device="cpu")
    assert (out / "results.json").exists() and (out / "grokking_accuracy.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "grokking" and saved["preset"] == "micro"
    p = grokking.PRESETS["micro"]
    assert [r["weight_decay"] for r in saved["table"]] == list(p.weight_decays)
    for trial in results["trials"]:
        acc = trial["accuracy"]
        assert acc["step"] == list(range(p.eval_every, p.steps + 1, p.eval_every))
        assert all(0.0 <= v <= 1.0 for v in acc["train"] + acc["held_out"])
    assert "step held-out acc >= 99%" in (out / "report.md").read_text()
    lines = []
    grokking.run(out, "micro", lines.append, device="cpu")
    assert sum("done already" in line for line in lines) == len(p.weight_decays)


def test_first_step_finds_the_first_evaluation_at_the_target():
    assert grokking.first_step([10, 20, 30], [0.5, 0.995, 0.98]) == 20
    assert grokking.first_step([10, 20], [0.5, 0.9]) is None


@pytest.mark.slow
def test_a_small_transformer_groks_addition_mod_23(tmp_path, monkeypatch):
    """Memorises the training pairs first, then reaches 99% on every held-out pair."""
    tiny = grokking.Preset(op="add", p=23, train_fraction=0.5, d_model=64, n_layers=1, n_heads=4,
                           steps=3000, batch_size=512, lr=3e-3, warmup_steps=10, eval_every=25,
                           weight_decays=(1.0,))
    monkeypatch.setitem(grokking.PRESETS, "tiny", tiny)
    (trial,) = grokking.run(tmp_path / "grok", "tiny", lambda s: None, device="cpu")["trials"]
    assert trial["status"] == "ok"
    assert trial["step_held_out_99"] is not None and trial["final_held_out_accuracy"] >= 0.99
    assert trial["step_train_99"] < trial["step_held_out_99"]  # memorisation comes first


def test_a_resumed_task_reads_its_tokenizer_back_and_refuses_another_task(tmp_path):
    first = ModularTask(_config(), tmp_path, resume=False)
    first.tokenizer.save(tmp_path / "tokenizer.json")
    again = ModularTask(_config(), tmp_path, resume=True)
    assert again.tokenizer.vocab_size == first.tokenizer.vocab_size == 11 + len(OPS) + 1
    assert torch.equal(again.val_x, first.val_x) and torch.equal(again.train_y, first.train_y)
    with pytest.raises(AttnkitError, match="does not match"):
        ModularTask(_config("modular:add:p=13"), tmp_path, resume=True)


def test_the_cli_lists_and_runs_the_experiment(tmp_path, capsys):
    from attnkit.cli import main

    out = tmp_path / "grok"
    assert main(["experiment", "grokking", "--micro", "--out", str(out), "--device", "cpu"]) == 0
    assert "done: grokking (micro)" in capsys.readouterr().out
    assert (out / "report.md").exists()
