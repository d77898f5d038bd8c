"""``attnkit.load``: a trained run, or a Hugging Face folder converted on the fly, as a
:class:`~attnkit.interop.loaded.Loaded` ready for inference."""

from __future__ import annotations

from pathlib import Path

from attnkit.config import config_from_dict
from attnkit.devices import resolve_device, resolve_dtype
from attnkit.errors import AttnkitError
from attnkit.interop.bart import read_token_ids
from attnkit.interop.hf import from_hf, is_hf_dir
from attnkit.interop.loaded import Loaded
from attnkit.models import build_model
from attnkit.runs import (
    check_config_matches,
    check_tokenizer_matches,
    latest_checkpoint,
    read_labels,
    read_run_config,
)
from attnkit.tokenizers import load_tokenizer
from attnkit.weights import load_weights


def load(run_dir: str | Path, device: str = "auto", dtype: str = "fp32") -> Loaded:
    """Load a trained run for inference::

        run = attnkit.load("runs/pydoc-char")
        run.model, run.tokenizer, run.config, run.labels

    The model is in eval mode on ``device``; the :class:`Loaded` also holds the run's
    tokenizer (None for a converted run that has only token ids), its resolved config, a
    classifier's labels and a converted BART run's token ids. A Hugging Face GPT-2, Llama,
    BERT or BART folder (``config.json`` with a ``model_type``, no ``checkpoints/``) is
    converted with :func:`attnkit.interop.from_hf`.

    ``dtype`` (``fp32``, ``bf16`` or ``fp16``) is the precision the weights are kept in for
    inference. Checkpoints are fp32; ``bf16`` halves the bytes read per decoded token, which
    is what bounds batch-1 decoding, so it roughly doubles decode speed on GPUs and on CPUs
    with native bf16 (AVX512-BF16, AMX). Logits are turned back to fp32 before sampling."""
    run_dir = Path(run_dir)
    dtype = resolve_dtype(dtype)
    if is_hf_dir(run_dir):  # a Hugging Face folder: convert on the fly
        loaded = from_hf(run_dir)
        loaded.model.to(resolve_device(device, "--device"), dtype).eval()
        return loaded
    ckpt = latest_checkpoint(run_dir)
    saved = read_run_config(run_dir)
    cfg = config_from_dict(saved)
    check_config_matches(run_dir, ckpt, saved)
    token_ids = read_token_ids(run_dir)  # a converted BART run: the ids of its config.json
    ids_only = token_ids is not None and not (run_dir / "tokenizer.json").exists()
    no_text = ids_only or cfg.data.task == "image"  # an image run has no tokenizer
    tokenizer = None if no_text else load_tokenizer(run_dir / "tokenizer.json")
    check_tokenizer_matches(run_dir, ckpt)
    if tokenizer is not None and tokenizer.vocab_size > cfg.model.vocab_size:  # padding is fine
        raise AttnkitError(f"{run_dir}/tokenizer.json has {tokenizer.vocab_size} tokens but the "
                           f"model expects {cfg.model.vocab_size} (tokenizer from another run?)")
    model = build_model(cfg.model)
    load_weights(model, ckpt / "model.safetensors")
    model.to(resolve_device(device, "--device"), dtype).eval()
    # a classification run's label names, in id order
    labels = read_labels(run_dir) if (run_dir / "labels.json").is_file() else None
    return Loaded(model, tokenizer, cfg, labels=labels, token_ids=token_ids, source=run_dir)
