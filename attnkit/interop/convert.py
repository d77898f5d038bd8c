"""``attnkit convert``: a Hugging Face folder into a native run directory, and a run's latest
checkpoint out as a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

from attnkit.config import config_from_dict
from attnkit.interop.bart import read_token_ids, save_token_ids
from attnkit.interop.hf import from_hf, is_hf_dir, to_hf
from attnkit.interop.io import atomic_dir
from attnkit.interop.loaded import Loaded
from attnkit.interop.loading import load
from attnkit.models import build_model
from attnkit.runs import (
    check_config_matches,
    latest_checkpoint,
    read_labels,
    read_run_config,
    save_labels,
    write_json,
)
from attnkit.weights import load_weights, save_checkpoint


def convert_from_hf(src: str | Path, out: str | Path) -> Loaded:
    """``attnkit convert --from-hf SRC --out OUT``: a native run directory (``config.json``,
    ``tokenizer.json`` when SRC has one, ``labels.json`` for a classifier, ``checkpoints/step-000000``,
    ``checkpoints/latest``; for BART also ``token_ids.json``, the special ids of SRC's config).
    Returns what was converted."""
    run = from_hf(src)
    with atomic_dir(Path(out)) as tmp:
        write_json(tmp / "config.json", run.config.to_dict())
        if run.tokenizer is not None:
            run.tokenizer.save(tmp / "tokenizer.json")
        if run.token_ids is not None:  # BART: the ids its config.json names
            save_token_ids(tmp, run.token_ids)
        if run.labels is not None:  # a classifier's id2label, as a trained run keeps them
            save_labels(tmp, run.labels)
        save_checkpoint(tmp, run.model, None,
                        {"step": 0, "converted_from": str(Path(src).resolve())})
    return run


def convert_to_hf(run_dir: str | Path, out: str | Path) -> Loaded:
    """``attnkit convert RUN --to-hf OUT``: the run's latest checkpoint as a Hugging Face
    folder. Returns what was exported.

    Unlike :func:`attnkit.load`, a run without ``tokenizer.json`` is fine (one converted
    from a Hugging Face folder that had none, or an image run): the export then has no
    tokenizer either.
    """
    run_dir = Path(run_dir)
    if is_hf_dir(run_dir) or (run_dir / "tokenizer.json").is_file():
        run = load(run_dir, device="cpu")
    else:
        ckpt = latest_checkpoint(run_dir)
        saved = read_run_config(run_dir)
        check_config_matches(run_dir, ckpt, saved)
        cfg = config_from_dict(saved)
        model = build_model(cfg.model)
        load_weights(model, ckpt / "model.safetensors")
        labels = read_labels(run_dir) if (run_dir / "labels.json").is_file() else None
        run = Loaded(model.eval(), None, cfg, labels=labels, source=run_dir)
    if run.token_ids is None:  # a converted BART run keeps its config's ids
        run.token_ids = read_token_ids(run_dir)
    to_hf(run, out)
    return run
