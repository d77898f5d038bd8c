"""Hugging Face interop: GPT-2 and Llama checkpoints in, attnkit decoders out, and back.

::

    model = attnkit.interop.from_hf("gpt2-folder")    # model.tokenizer may be None
    attnkit.interop.to_hf(model, "exported/")         # config.json, model.safetensors, tokenizer.json
    model = attnkit.load("gpt2-folder")               # attnkit.load recognises such a folder too

One declarative key map per architecture (:mod:`attnkit.interop.keymap`)
serves both directions; the config mapping lives in
:mod:`attnkit.interop.decoder`. Conversion needs only torch, safetensors and
JSON - transformers is not imported - and never unpickles.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from attnkit.checkpoint import model_state, save_checkpoint, write_json
from attnkit.config import DataConfig, RunConfig
from attnkit.errors import AttnkitError
from attnkit.interop.decoder import ARCHITECTURES, Architecture, ConfigReader, export_architecture
from attnkit.interop.io import HFWeights, atomic_dir, folder_tokenizer, read_hf_config
from attnkit.interop.keymap import MissingTensor, Shapes, export_tensors, import_tensors

__all__ = ["ARCHITECTURES", "from_hf", "to_hf", "is_hf_dir", "convert_from_hf", "convert_to_hf"]

#: Families whose converters live in a module of their own, by Hugging Face ``model_type``
#: (import) and by attnkit family (export): (module, function), imported only when used.
IMPORTERS: dict[str, tuple[str, str]] = {"bert": ("attnkit.interop.bert", "from_hf_bert"),
                                          "bart": ("attnkit.interop.bart", "from_hf_bart")}
EXPORTERS: dict[str, tuple[str, str]] = {"encoder": ("attnkit.interop.bert", "to_hf_bert"),
                                          "seq2seq": ("attnkit.interop.bart", "to_hf_bart")}


def _function(where: tuple[str, str]):
    module, name = where
    return getattr(importlib.import_module(module), name)


def is_hf_dir(path: str | Path) -> bool:
    """Whether ``path`` looks like a Hugging Face model folder rather than an attnkit run:
    a ``config.json`` with a ``model_type`` and no ``checkpoints/``."""
    path = Path(path)
    if not path.is_dir() or (path / "checkpoints").exists():
        return False
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data


def _architecture(data: dict, path: Path) -> Architecture:
    model_type = data.get("model_type")
    if model_type is None:
        raise AttnkitError(f"{path} has no 'model_type' (not a transformers config; re-save the "
                           f"model with save_pretrained)")
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise AttnkitError(f"{path}: model_type '{model_type}' is not supported (attnkit converts "
                           f"{', '.join([*ARCHITECTURES, *IMPORTERS])})")
    classes = data.get("architectures") or []
    bad = [c for c in classes if c not in arch.classes] if isinstance(classes, list) else [classes]
    if bad:
        raise AttnkitError(f"{path}: architectures '{bad[0]}' is not supported (attnkit converts "
                           f"the language model: {arch.classes[0]})")
    return arch


def from_hf(path: str | Path) -> nn.Module:
    """Import a Hugging Face GPT-2 or Llama folder (``config.json`` + safetensors) as an
    attnkit :class:`~attnkit.models.Decoder`, in eval mode on the CPU in float32 (a BERT or
    BART folder goes to :data:`IMPORTERS`' converter).

    ``model.tokenizer`` is the folder's ``tokenizer.json`` (None without one) and
    ``model.run_config`` the :class:`~attnkit.config.RunConfig` a converted run records.
    """
    from attnkit.models import build_model

    folder = Path(path)
    data = read_hf_config(folder)
    if data.get("model_type") in IMPORTERS:
        return _function(IMPORTERS[data["model_type"]])(folder)
    config_path = folder / "config.json"
    arch = _architecture(data, config_path)
    cfg = arch.config_in(ConfigReader(data, config_path))
    model = build_model(cfg)
    expected = model_state(model)  # tied tensors once
    shapes = Shapes(cfg.n_heads, cfg.n_kv_heads, cfg.head_size)
    with HFWeights(folder, arch.keymap.prefix) as weights:
        try:
            tensors, sources = import_tensors(arch.keymap, weights.get, set(expected),
                                              cfg.n_layers, shapes)
        except MissingTensor as e:
            raise AttnkitError(f"{weights.file_of(e.key)} has no tensor '{e.key}' (attnkit's "
                               f"'{e.ours}' needs it; the weights do not match config.json)") from None
        except ValueError as e:
            raise AttnkitError(f"{folder}: {e} (the weights do not match config.json)") from None
        _refuse_unused(weights, arch, set(sources.values()), cfg.tie_embeddings)
        weights.check_shapes(tensors, expected, sources)
    missing = [k for k in expected if k not in tensors]
    if missing:  # every key map row covers the model it describes; this guards the maps
        raise AttnkitError(f"no {arch.model_type} tensor maps to attnkit's '{missing[0]}' "
                           f"(report this as an attnkit bug)")
    model.load_state_dict(tensors, strict=False)
    model.eval()
    tokenizer = folder_tokenizer(folder)
    spec = "gpt2" if tokenizer is not None and tokenizer.kind == "gpt2" else str(folder.resolve())
    model.tokenizer = tokenizer
    model.run_config = RunConfig(model=cfg, data=DataConfig(tokenizer=spec))
    return model


def _refuse_unused(weights: HFWeights, arch: Architecture, used: set[str], tied: bool) -> None:
    """A tensor the key map did not read means the file holds more than the config says -
    refuse rather than drop weights silently."""
    prefix = arch.keymap.prefix
    for key in weights.keys():
        if key in used or prefix + key in used:
            continue
        if key.endswith(arch.keymap.ignore) or (tied and key == "lm_head.weight"):
            continue
        raise AttnkitError(f"{weights.file_of(key)}: unexpected tensor '{key}' (not part of a "
                           f"{arch.classes[0]} with this config.json; attnkit does not convert it)")


def to_hf(model: nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face folder: ``config.json`` (with ``architectures`` and
    ``model_type``), ``model.safetensors``, and - when the tokenizer is a Hugging Face one
    (kinds ``hf``, ``gpt2``, ``bpe``) - ``tokenizer.json`` and ``tokenizer_config.json``.

    ``tokenizer`` defaults to ``model.tokenizer``. ``path`` must not exist or be
    empty; it appears only when complete.
    """
    from attnkit.tokenizers.hf import HFBackedTokenizer

    cfg = model.cfg
    family = getattr(cfg, "family", "decoder")
    if family in EXPORTERS:
        _function(EXPORTERS[family])(model, path, tokenizer=tokenizer)
        return Path(path)
    arch = export_architecture(cfg)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    specials = {k: v for k, v in getattr(tokenizer, "special_tokens", {}).items()
                if v < cfg.vocab_size}
    config = arch.config_out(cfg, specials)
    shapes = Shapes(cfg.n_heads, cfg.n_kv_heads, cfg.head_size)
    try:
        tensors = export_tensors(arch.keymap, model_state(model), cfg.n_layers, shapes)
    except KeyError as e:
        raise AttnkitError(f"cannot export to {arch.model_type}: {e.args[0]} (the model has "
                           f"parameters the architecture lacks)") from None
    out = Path(path)
    with atomic_dir(out) as tmp:
        write_json(tmp / "config.json", config)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if isinstance(tokenizer, HFBackedTokenizer):
            tokenizer.save(tmp / "tokenizer.json")
            write_json(tmp / "tokenizer_config.json", _tokenizer_config(tokenizer, cfg))
    return out


def _tokenizer_config(tokenizer, cfg) -> dict:
    """What ``AutoTokenizer`` needs beside ``tokenizer.json``: the class and special tokens."""
    out: dict = {"tokenizer_class": "PreTrainedTokenizerFast",
                 "model_max_length": cfg.context_length}
    for name, i in tokenizer.special_tokens.items():
        out[f"{name}_token"] = tokenizer.hf_tokenizer.id_to_token(i)
    return out


def convert_from_hf(src: str | Path, out: str | Path) -> nn.Module:
    """``attnkit convert --from-hf SRC --out OUT``: a native run directory (``config.json``,
    ``tokenizer.json`` when SRC has one, ``checkpoints/step-000000``, ``checkpoints/latest``;
    for BART also ``token_ids.json``, the special ids of SRC's config)."""
    model = from_hf(src)
    with atomic_dir(Path(out)) as tmp:
        write_json(tmp / "config.json", model.run_config.to_dict())
        if model.tokenizer is not None:
            model.tokenizer.save(tmp / "tokenizer.json")
        if getattr(model, "token_ids", None) is not None:  # BART: the ids its config.json names
            from attnkit.interop.bart import save_token_ids

            save_token_ids(tmp, model.token_ids)
        save_checkpoint(tmp, model, None, {"step": 0, "converted_from": str(Path(src).resolve())})
    return model


def convert_to_hf(run: str | Path, out: str | Path) -> nn.Module:
    """``attnkit convert RUN --to-hf OUT``: the run's latest checkpoint as a Hugging Face folder.

    Unlike :func:`attnkit.load`, a run without ``tokenizer.json`` is fine (one converted
    from a Hugging Face folder that had none): the export then has no tokenizer either.
    """
    from attnkit.checkpoint import (
        check_config_matches,
        latest_checkpoint,
        load,
        load_weights,
        read_run_config,
    )
    from attnkit.config import config_from_dict
    from attnkit.models import build_model

    run = Path(run)
    if is_hf_dir(run) or (run / "tokenizer.json").is_file():
        model = load(run, device="cpu")
    else:
        ckpt = latest_checkpoint(run)
        check_config_matches(run, ckpt)
        model = build_model(config_from_dict(read_run_config(run)).model)
        load_weights(model, ckpt / "model.safetensors")
        model.eval()
        model.tokenizer = None
    if getattr(model, "token_ids", None) is None:  # a converted BART run keeps its config's ids
        from attnkit.interop.bart import read_token_ids

        model.token_ids = read_token_ids(run)
    to_hf(model, out)
    return model
