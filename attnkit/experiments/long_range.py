"""``attnkit experiment long-range``: recall a token d positions back.

The task (written as a text file, so each trial is an ordinary language-model run on
it): a stream of examples ``K<filler>=K`` followed by a newline, where the key ``K`` is a
random capital letter, the filler is ``d - 1`` random lowercase letters, and after ``=``
comes the key again. Only that last token is predictable from context, and only by
looking ``d`` positions back; ``d`` is drawn uniformly from 1 to ``context_length - 1``.
A model trained on windows of this stream must find the most recent key.

After training, accuracy is measured per gap: windows of exactly ``context_length``
tokens that end with ``K<d - 1 filler>=`` (preceded by earlier examples, as in
training), scored by whether the model's most likely next token is ``K``. Chance is
1/26. The Transformer and the LSTM have about the same number of non-embedding
parameters.
"""

from __future__ import annotations

import random
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from attnkit.experiments import plots
from attnkit.experiments.common import (
    Log,
    Trial,
    finish,
    fmt_int,
    lstm_width_for,
    run_trials,
    standard_body,
    start_experiment,
    table,
)
from attnkit.experiments.scaling import transformer_non_embedding

KEYS = string.ascii_uppercase
FILLER = string.ascii_lowercase


@dataclass(frozen=True)
class Preset:
    context_length: int
    d_model: int  # the Transformer's; the LSTM's width is matched to its parameter count
    n_layers: int
    n_heads: int
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    corpus_chars: int
    eval_examples: int  # per gap


PRESETS: dict[str, Preset] = {
    "micro": Preset(context_length=16, d_model=16, n_layers=1, n_heads=2, steps=4, batch_size=4,
                    lr=3e-3, warmup_steps=1, corpus_chars=4_000, eval_examples=8),
    "quick": Preset(context_length=64, d_model=64, n_layers=2, n_heads=4, steps=600,
                    batch_size=32, lr=3e-3, warmup_steps=50, corpus_chars=400_000,
                    eval_examples=200),
    "full": Preset(context_length=1024, d_model=256, n_layers=4, n_heads=8, steps=10_000,
                   batch_size=64, lr=1e-3, warmup_steps=500, corpus_chars=20_000_000,
                   eval_examples=1000),
}


def example(rng: random.Random, gap: int, answer: bool = True) -> str:
    """One example with the key ``gap`` positions before the ``=``."""
    key = rng.choice(KEYS)
    probe = key + "".join(rng.choices(FILLER, k=gap - 1)) + "="
    return probe + key + "\n" if answer else probe


def recall_text(n_chars: int, max_gap: int, seed: int) -> str:
    """At least ``n_chars`` of examples with gaps uniform in ``[1, max_gap]``."""
    rng = random.Random(f"attnkit.long-range:{seed}")
    parts, size = [], 0
    while size < n_chars:
        parts.append(example(rng, rng.randint(1, max_gap)))
        size += len(parts[-1])
    return "".join(parts)


def gaps_for(context_length: int) -> list[int]:
    """Powers of two up to the context, plus midpoints and the longest possible gap."""
    gaps = {1, context_length - 1}
    g = 2
    while g < context_length:
        gaps.update({g, g + g // 2})
        g *= 2
    return sorted(x for x in gaps if x < context_length)


def probe_windows(context_length: int, gap: int, n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` windows of ``context_length`` characters ending with a probe of ``gap``, and keys."""
    rng = random.Random(f"attnkit.long-range.eval:{seed}:{gap}")
    windows, keys = [], []
    for _ in range(n):
        probe = example(rng, gap, answer=False)
        room = context_length - len(probe)
        history = recall_text(room + context_length, context_length - 1, rng.randrange(10**9))
        windows.append((history[len(history) - room:] if room else "") + probe)
        keys.append(probe[0])
    return windows, keys


@torch.no_grad()
def recall_accuracy(model: torch.nn.Module, tokenizer, context_length: int, gaps: list[int],
                    n: int, device: torch.device) -> list[float]:
    """Accuracy of the most likely next token after each probe, per gap."""
    was_training = model.training
    model.eval()
    out = []
    for gap in gaps:
        windows, keys = probe_windows(context_length, gap, n, seed=0)
        ids = torch.tensor([tokenizer.encode(w) for w in windows], device=device)  # (n, T)
        want = torch.tensor([tokenizer.encode(k)[0] for k in keys], device=device)
        logits, _ = model(ids)  # (n, T, V)
        out.append((logits[:, -1].argmax(-1) == want).float().mean().item())
    model.train(was_training)
    return out


def trials(p: Preset, data_path: Path, device: str) -> list[Trial]:
    train = dict(steps=p.steps, batch_size=p.batch_size, lr=p.lr, warmup_steps=p.warmup_steps,
                 eval_every=max(1, p.steps // 4), eval_batches=10,
                 checkpoint_every=max(1, p.steps // 2), log_every=max(1, p.steps // 50),
                 samples=0, device=device)
    data = dict(path=str(data_path), tokenizer="char", loss_after="=")  # score the answers only
    T = p.context_length
    width = lstm_width_for(transformer_non_embedding(p.d_model, p.n_layers), p.n_layers)
    return [
        Trial(f"transformer-d{p.d_model}", f"transformer d_model={p.d_model}, {p.n_layers} layers",
              dict(model=dict(family="decoder", d_model=p.d_model, n_layers=p.n_layers,
                              n_heads=p.n_heads, context_length=T), train=train, data=data),
              {"arch": "transformer", "d_model": p.d_model, "n_layers": p.n_layers}),
        Trial(f"lstm-d{width}", f"LSTM d_model={width}, {p.n_layers} layers (matched size)",
              dict(model=dict(family="lstm", d_model=width, n_layers=p.n_layers, context_length=T),
                   train=train, data=data),
              {"arch": "lstm", "d_model": width, "n_layers": p.n_layers}),
    ]


def run(out_dir: Path, preset: str, log: Log, device: str = "auto") -> dict[str, Any]:
    p = PRESETS[preset]
    start_experiment(out_dir, "long-range", preset)
    data_path = (out_dir / "data" / f"recall-T{p.context_length}.txt").resolve()
    if not data_path.exists():  # written once: its size and mtime key the token cache
        data_path.parent.mkdir(parents=True, exist_ok=True)
        data_path.write_text(recall_text(p.corpus_chars, p.context_length - 1, seed=0),
                             encoding="utf-8")
    gaps = gaps_for(p.context_length)
    log(f"long-range ({preset}): recall across gaps {gaps[0]}..{gaps[-1]}, context "
        f"{p.context_length}, {fmt_int(p.steps * p.batch_size * p.context_length)} training "
        f"tokens per model")

    def body(trainer, trial: Trial) -> dict[str, Any]:
        record = standard_body(trainer, trial)
        acc = recall_accuracy(trainer.model, trainer.tokenizer, p.context_length, gaps,
                              p.eval_examples, trainer.device)
        return {**record, "gaps": gaps, "accuracy": [round(a, 4) for a in acc]}

    records = run_trials(trials(p, data_path, device), out_dir, log, body)
    series = {f"{plots.LABELS[r['arch']]} ({fmt_int(r['non_embedding_params'])} params)":
              (r["gaps"], r["accuracy"]) for r in records if r["status"] == "ok"}
    plot = plots.accuracy_vs_gap(series, 1 / len(KEYS), out_dir / "long_range_accuracy.png",
                                 f"Recall across a gap (context {p.context_length})")
    results = {"experiment": "long-range", "preset": preset, "config": asdict(p),
               "task": "K<d-1 random lowercase>=K, K one of 26 capitals; accuracy of K after '='",
               "chance": 1 / len(KEYS), "gaps": gaps, "trials": records, "plots": [plot.name]}
    return finish(out_dir, results, report(results), log)


def report(results: dict[str, Any]) -> str:
    ok = [r for r in results["trials"] if r["status"] == "ok"]
    header = ["gap d"] + [f"{plots.LABELS[r['arch']]} accuracy" for r in ok]
    rows = [[g] + [f"{r['accuracy'][i]:.3f}" for r in ok] for i, g in enumerate(results["gaps"])]
    models = table(["architecture", "d_model", "layers", "non-emb. params", "val loss"],
                   [[r["arch"], r["d_model"], r["n_layers"], fmt_int(r["non_embedding_params"]),
                     f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "diverged"]
                    for r in results["trials"]])
    return f"""# Long-range recall ({results['preset']} preset)

Task: {results['task']}. Chance is {results['chance']:.3f}.

{models}

{table(header, rows)}

![accuracy vs gap](long_range_accuracy.png)
"""
