"""Any Hugging Face folder in, any attnkit model out, and back: GPT-2 and Llama here, BERT,
BART and ViT by their own modules (:data:`IMPORTERS`, :data:`EXPORTERS`)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from attnkit.config import DataConfig, RunConfig
from attnkit.errors import AttnkitError
from attnkit.interop.bart import from_hf_bart, to_hf_bart
from attnkit.interop.bert import from_hf_bert, to_hf_bert
from attnkit.interop.decoder import ARCHITECTURES, Architecture, ConfigReader, export_architecture
from attnkit.interop.io import HFWeights, atomic_dir, folder_tokenizer, read_hf_config, tokenizer_config
from attnkit.interop.keymap import MissingTensor, Shapes, export_tensors, import_tensors
from attnkit.interop.loaded import Loaded, unpack
from attnkit.interop.vit import from_hf_vit, to_hf_vit
from attnkit.models import build_model
from attnkit.runs import write_json
from attnkit.weights import model_state

#: Families whose converters live in a module of their own: by Hugging Face ``model_type``
#: (import) and by attnkit family (export).
IMPORTERS = {"bert": from_hf_bert, "bart": from_hf_bart, "vit": from_hf_vit}
EXPORTERS = {"encoder": to_hf_bert, "seq2seq": to_hf_bart, "vit": to_hf_vit}


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


def from_hf(path: str | Path) -> Loaded:
    """Import a Hugging Face GPT-2 or Llama folder (``config.json`` + safetensors) as an
    attnkit :class:`~attnkit.models.Decoder`, in eval mode on the CPU in float32 (a BERT,
    BART or ViT folder goes to :data:`IMPORTERS`' converter).

    The :class:`Loaded` holds the folder's ``tokenizer.json`` (None without one) and the
    :class:`~attnkit.config.RunConfig` a converted run records; ``source`` is the folder.
    """
    folder = Path(path)
    data = read_hf_config(folder)
    if data.get("model_type") in IMPORTERS:
        return IMPORTERS[data["model_type"]](folder)
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
    return Loaded(model, tokenizer, RunConfig(model=cfg, data=DataConfig(tokenizer=spec)),
                  source=folder)


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


def to_hf(run: Loaded | nn.Module, path: str | Path, tokenizer=None) -> Path:
    """Write ``run`` (a :class:`Loaded`, or a bare model) as a Hugging Face folder:
    ``config.json`` (with ``architectures`` and ``model_type``), ``model.safetensors``, and -
    when the tokenizer is a Hugging Face one (kinds ``hf``, ``gpt2``, ``bpe``) -
    ``tokenizer.json`` and ``tokenizer_config.json``. An encoder, encoder-decoder or ViT goes
    to :data:`EXPORTERS`' converter, which also takes a classifier's labels or BART's token
    ids from a Loaded.

    ``tokenizer`` defaults to the Loaded's (none for a bare model). ``path`` must not exist
    or be empty; it appears only when complete.
    """
    from attnkit.tokenizers.hf import HFBackedTokenizer

    model, tokenizer, _, _ = unpack(run, tokenizer)
    cfg = model.cfg
    family = getattr(cfg, "family", "decoder")
    if family in EXPORTERS:
        EXPORTERS[family](run, path, tokenizer=tokenizer)
        return Path(path)
    arch = export_architecture(cfg)
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
            write_json(tmp / "tokenizer_config.json", tokenizer_config(tokenizer, cfg))
    return out
