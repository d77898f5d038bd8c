"""``attnkit experiment vision``: the vision Transformer beside classical baselines.

Four models on the same images and the same split (the ``vit-digits`` recipe's data: by
default scikit-learn's 8 x 8 digits, 1,437 train / 360 test, :mod:`attnkit.data.images`):

- **ViT**: the ``vit-digits`` recipe, read when the experiment runs (so it follows the recipe
  as it is tuned), trained by :class:`attnkit.train.Trainer` as an ordinary run under
  ``trials/vit``; only ``train.steps`` (and the evaluation and checkpoint cadence within
  it) change with the preset.
- **logistic regression**: ``sklearn.linear_model.LogisticRegression`` (multinomial, lbfgs,
  C = 1) on the 64 pixels, with ``max_iter`` high enough that it converges (recorded).
- **SVM**: ``sklearn.svm.SVC`` with the RBF kernel, C = 1 and ``gamma="scale"`` (the defaults).
- **CNN**: :class:`SmallCNN` in plain PyTorch, AdamW, seeded with the recipe's ``train.seed``.

Both scikit-learn models see the pixels exactly as the ViT does ((x - 0.5) / 0.5, in
[-1, 1]), flattened. Only the ViT's training images are shifted (the recipe's
``data.augment``); the baselines train on the images as they are.

Reported per model: test accuracy, training time (the ViT: its training steps, without the
periodic evaluations and checkpoint writes; scikit-learn: ``fit``; the CNN: its epochs) and
parameters. For the neural networks those are trainable weights and biases; for
scikit-learn the fitted numbers the model predicts with, named in the table.

Each model's outcome is recorded once (``trials/vit/trial.json``,
``baselines/NAME.json``); re-running the command skips recorded models, resumes an
interrupted ViT run and redraws the table, plot and report.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.data.images import ImageSet
from attnkit.errors import AttnkitError
from attnkit.experiments import plots
from attnkit.experiments.common import (
    Log,
    Trial,
    finish,
    fmt_int,
    read_json,
    run_trials,
    start_experiment,
    table,
    write_json,
)

RECIPE = "vit-digits"


@dataclass(frozen=True)
class Preset:
    vit_steps: int | None  # None: the recipe's train.steps
    cnn_epochs: int
    cnn_widths: tuple[int, int] = (32, 64)  # channels of the two conv layers
    cnn_batch_size: int = 64
    cnn_lr: float = 3e-3
    cnn_weight_decay: float = 0.01  # AdamW's default
    logreg_max_iter: int = 5000  # lbfgs converges in a few hundred on the digits
    svm_c: float = 1.0  # SVC's default


PRESETS: dict[str, Preset] = {
    "micro": Preset(vit_steps=20, cnn_epochs=1),  # seconds: for tests; the ViT is untrained
    "quick": Preset(vit_steps=400, cnn_epochs=15),  # well under a minute on 2 CPU cores
    "full": Preset(vit_steps=None, cnn_epochs=30),  # the recipe as it is: minutes on a CPU
}


class SmallCNN(nn.Module):
    """Two 3 x 3 convolutions (padding 1), each followed by ReLU and 2 x 2 max-pooling, then
    one linear layer: ``(B, C, H, W) -> (B, w1, H/2, W/2) -> (B, w2, H/4, W/4) -> (B, L)``."""

    def __init__(self, channels: int, n_labels: int, image_size: int, widths: tuple[int, int]
                 ) -> None:
        super().__init__()
        if image_size % 4:
            raise AttnkitError(f"the CNN baseline pools twice by 2, so it needs an image size "
                               f"divisible by 4, got {image_size}")
        self.conv1 = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding=1)
        self.head = nn.Linear(widths[1] * (image_size // 4) ** 2, n_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, w1, H/2, W/2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, w2, H/4, W/4)
        return self.head(x.flatten(1))  # (B, w2 * H/4 * W/4) -> (B, L)


def vit_config(preset: Preset, device: str) -> dict[str, Any]:
    """The recipe's nested config with the preset's steps, the device, and no samples."""
    from attnkit.config import TrainConfig, load_recipe

    cfg = load_recipe(RECIPE)
    train = dict(cfg.get("train") or {})
    if preset.vit_steps is not None:
        train["steps"] = preset.vit_steps
    steps = train.get("steps", TrainConfig.steps)
    for key in ("eval_every", "checkpoint_every"):  # at most the run's length
        train[key] = min(train.get(key, steps), steps)
    train.update(samples=0, device=device)
    return {**cfg, "train": train}


# --- the baselines ------------------------------------------------------------------------

def _flat(x: torch.Tensor):
    return x.flatten(1).numpy()  # (N, C, H, W) -> (N, C * H * W)


def _fit(model, data: ImageSet) -> float:
    """``model.fit`` on the training images; seconds."""
    t0 = time.perf_counter()
    model.fit(_flat(data.train_x), data.train_y.numpy())
    return time.perf_counter() - t0


def _score(model, data: ImageSet) -> float:
    return float((model.predict(_flat(data.val_x)) == data.val_y.numpy()).mean())


def logistic_regression(data: ImageSet, p: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=p.logreg_max_iter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        seconds = _fit(model, data)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    n_iter = int(model.n_iter_.max())
    k, f = model.coef_.shape
    return {"accuracy": _score(model, data), "train_s": seconds,
            "params": model.coef_.size + model.intercept_.size,
            "params_counted": f"coefficients + intercepts ({k} x {f} + {k})",
            "n_iter": n_iter, "converged": converged}


def svm(data: ImageSet, p: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    from sklearn.svm import SVC

    model = SVC(kernel="rbf", C=p.svm_c, gamma="scale")
    seconds = _fit(model, data)
    n_sv, f = model.support_vectors_.shape
    return {"accuracy": _score(model, data), "train_s": seconds,
            "params": model.support_vectors_.size + model.dual_coef_.size + model.intercept_.size,
            "params_counted": f"support vectors x features + dual coefs + intercepts ({n_sv} x {f} "
                              f"+ {model.dual_coef_.size} + {model.intercept_.size})",
            "n_support_vectors": n_sv}


def cnn(data: ImageSet, p: Preset, seed: int, device: torch.device) -> dict[str, Any]:
    """:class:`SmallCNN` trained for ``p.cnn_epochs`` epochs of shuffled batches."""
    x, y = data.train_x.to(device), data.train_y.to(device)
    with torch.random.fork_rng(devices=[]):  # the seed sets the initial weights, nothing else
        torch.manual_seed(seed)
        model = SmallCNN(data.channels, len(data.labels), data.train_x.shape[-1], p.cnn_widths)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=p.cnn_lr, weight_decay=p.cnn_weight_decay)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(p.cnn_epochs):
        for rows in torch.randperm(len(y), generator=g).split(p.cnn_batch_size):
            rows = rows.to(device)
            loss = F.cross_entropy(model(x[rows]), y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        guess = model(data.val_x.to(device)).argmax(-1).cpu()
    return {"accuracy": (guess == data.val_y).float().mean().item(), "train_s": seconds,
            "params": sum(q.numel() for q in model.parameters()),
            "params_counted": "weights and biases", "final_train_loss": loss.item()}


#: ``fit(data, preset, seed, device) -> record``: accuracy, train_s, params, params_counted, ...
Baseline = Callable[[ImageSet, Preset, int, torch.device], dict[str, Any]]
#: name -> (what the table calls it, how it is trained, its settings from the preset)
BASELINES: dict[str, tuple[str, Baseline, Callable[[Preset], dict[str, Any]]]] = {
    "logreg": ("logistic regression", logistic_regression,
               lambda p: {"solver": "lbfgs", "C": 1.0, "max_iter": p.logreg_max_iter}),
    "svm": ("SVM (RBF)", svm, lambda p: {"kernel": "rbf", "C": p.svm_c, "gamma": "scale"}),
    "cnn": ("CNN", cnn, lambda p: {"widths": list(p.cnn_widths), "epochs": p.cnn_epochs,
                                   "batch_size": p.cnn_batch_size, "lr": p.cnn_lr,
                                   "weight_decay": p.cnn_weight_decay}),
}


def run_baselines(p: Preset, data: ImageSet, seed: int, device: str, out_dir: Path, log: Log
                  ) -> list[dict[str, Any]]:
    """Fit (or read back) every baseline; each outcome goes to ``baselines/NAME.json``."""
    from attnkit.devices import resolve_device

    torch_device = resolve_device(device, "--device")
    records = []
    for i, (name, (label, fit, settings)) in enumerate(BASELINES.items(), start=1):
        spec = {**settings(p), "seed": seed, "device": device, "data": data.source}
        path = out_dir / "baselines" / f"{name}.json"
        head = f"baseline {i}/{len(BASELINES)}: {label}"
        if path.exists():
            record = read_json(path)
            if record.get("spec") != spec:
                raise AttnkitError(f"{path} was fitted with other settings (delete it, or choose "
                                   f"another --out)")
            log(f"{head} - done already ({_outcome(record)})")
        else:
            log(head)
            record = {"name": name, "model": label, "status": "ok",
                      **fit(data, p, seed, torch_device), "spec": spec}
            record["train_s"] = round(record["train_s"], 4)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, record)
            log(f"  -> {_outcome(record)}")
        records.append(record)
    return records


def _outcome(record: dict[str, Any]) -> str:
    return f"test accuracy {record['accuracy']:.4f}, {record['train_s']:.2f}s"


# --- the experiment -----------------------------------------------------------------------

def run(out_dir: Path, preset: str, log: Log, device: str = "auto") -> dict[str, Any]:
    from attnkit.config import config_from_dict
    from attnkit.data.images import load_images

    p = PRESETS[preset]
    start_experiment(out_dir, "vision", preset)
    spec = vit_config(p, device)
    resolved = config_from_dict(spec)  # the ViT's data, so that every model sees the same split
    data = load_images(resolved.data.path, resolved.model.image_size, resolved.data.val_fraction)
    seed = resolved.train.seed
    log(f"vision ({preset}): {data.source}, {len(data.train_y):,} train / {len(data.val_y):,} "
        f"test images, {len(data.labels)} classes; ViT ({RECIPE}, {resolved.train.steps} steps) "
        f"beside {len(BASELINES)} baselines")

    def body(trainer, trial: Trial) -> dict[str, Any]:
        summary = trainer.run()
        if summary["interrupted"]:
            raise KeyboardInterrupt
        metrics = trainer.evaluate()  # the final model on the whole test split
        return {"accuracy": metrics["accuracy"], "val_loss": metrics["val_loss"],
                "train_s": round(trainer.elapsed, 4), "wall_s": summary["wall_s"],
                "steps": trainer.step}

    vit_trial = Trial("vit", f"ViT ({RECIPE} recipe, {resolved.train.steps} steps)", spec,
                      {"model": "ViT", "recipe": RECIPE})
    (vit,) = run_trials([vit_trial], out_dir, log, body)
    if vit["status"] != "ok":
        raise AttnkitError(f"the ViT run diverged ({vit.get('error')}); delete "
                           f"{out_dir / 'trials' / 'vit'} to train it again (or change the recipe)")
    vit["params_counted"] = "weights and biases"
    records = [vit] + run_baselines(p, data, seed, device, out_dir, log)
    plot = plots.accuracy_and_time(
        [(r["model"], r["accuracy"], r["train_s"]) for r in records], 1 / len(data.labels),
        out_dir / "vision.png",
        f"{data.source}: {len(data.train_y):,} train / {len(data.val_y):,} test images "
        f"({preset} preset)")
    results = {"experiment": "vision", "preset": preset, "config": asdict(p), "recipe": RECIPE,
               "data": {"source": data.source, "train": len(data.train_y),
                        "test": len(data.val_y), "classes": len(data.labels)},
               "chance": 1 / len(data.labels), "threads": torch.get_num_threads(),
               "models": records, "plots": [plot.name]}
    log(results_table(results))
    return finish(out_dir, results, report(results), log)


def results_table(results: dict[str, Any]) -> str:
    rows = [[r["model"], f"{r['accuracy']:.4f}", f"{r['train_s']:.2f}", fmt_int(r["params"]),
             r["params_counted"]] for r in results["models"]]
    return table(["model", "test accuracy", "training time (s)", "parameters",
                  "parameters counted"], rows)


def report(results: dict[str, Any]) -> str:
    cfg, d = results["config"], results["data"]
    vit = results["models"][0]
    model = vit["spec"]["model"]
    by_name = {r["name"]: r for r in results["models"]}
    logreg = by_name["logreg"]
    return f"""# Vision: ViT beside classical baselines ({results['preset']} preset)

Data: {d['source']}, {d['train']:,} training / {d['test']:,} test images, {d['classes']} classes
(chance {results['chance']:.2f}); every model sees the same split. {results['threads']} torch
thread(s).

- ViT: the `{results['recipe']}` recipe (d_model {model.get('d_model')}, {model.get('n_layers')}
  layers, patch {model.get('patch_size')}), {vit['steps']} steps, trained by attnkit's Trainer
  (`trials/vit`); training time is its training steps alone.
- logistic regression: lbfgs, C 1, max_iter {cfg['logreg_max_iter']} (converged:
  {logreg.get('converged')}, {logreg.get('n_iter')} iterations).
- SVM: RBF kernel, C {cfg['svm_c']:g}, gamma "scale".
- CNN: two 3x3 convolutions ({cfg['cnn_widths'][0]} and {cfg['cnn_widths'][1]} channels) with
  ReLU and 2x2 max-pooling, then a linear layer; AdamW lr {cfg['cnn_lr']:g}, weight decay
  {cfg['cnn_weight_decay']:g}, batch {cfg['cnn_batch_size']}, {cfg['cnn_epochs']} epochs, no
  augmentation.

{results_table(results)}

![accuracy and training time](vision.png)
"""
