"""The vision family <-> Hugging Face ViT (``ViTForImageClassification``): the key map and the
config mapping, both ways.

Hugging Face's ViT is one point of attnkit's :class:`~attnkit.config.VisionConfig`: a class
token (``pool="cls"``), learned positions over patches + class token, pre-LN LayerNorm blocks
with separate q/k/v matrices, a final LayerNorm, and a linear classifier on the class token.
Every row of :data:`VIT` is a plain copy but one: the patch projection, a
``Conv2d(C, D, P, stride=P)`` there and the same function as attnkit's ``nn.Linear`` over
patches flattened in (C, P, P) order (``flatten_patches``).

::

    run = from_hf_vit("vit-tiny/")   # a Loaded: run.model (a ViT), run.labels, no tokenizer
    to_hf_vit(run, "exported/")      # config.json, model.safetensors

Hugging Face's ``layer_norm_eps`` defaults to 1e-12 (attnkit's ViT: 1e-6); the real value
crosses over in both directions. Like the rest of :mod:`attnkit.interop`, only JSON and
safetensors are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from attnkit.config import DataConfig, RunConfig, VisionConfig
from attnkit.devices import resolve_device
from attnkit.errors import AttnkitError
from attnkit.interop.bert import ACTIVATIONS, ACTIVATIONS_OUT, classifier_labels
from attnkit.interop.decoder import ConfigReader
from attnkit.interop.io import HFWeights, atomic_dir, read_hf_config
from attnkit.interop.keymap import KeyMap, MissingTensor, Shapes, entry, export_tensors, import_tensors
from attnkit.interop.loaded import Loaded, unpack
from attnkit.models.vit import ViT
from attnkit.nn.ffn import ffn_hidden_size
from attnkit.runs import write_json
from attnkit.weights import model_state

CLASS = "ViTForImageClassification"


def _linear(ours: str, theirs: str) -> tuple:
    """A Linear or LayerNorm: its weight and its bias."""
    return entry(f"{ours}.weight", f"{theirs}.weight"), entry(f"{ours}.bias", f"{theirs}.bias")


# The names save_pretrained writes (and the Hub holds); transformers 5 renames them on load.
_LAYER = "vit.encoder.layer.{i}"

_CONV = "vit.embeddings.patch_embeddings.projection.weight"  # (D, C, P, P)

#: ViT in every direction: (attnkit name, Hugging Face name, transforms).
VIT = KeyMap(
    entries=(
        entry("patch_emb.proj.weight", _CONV, "flatten_patches"),
        entry("patch_emb.proj.bias", "vit.embeddings.patch_embeddings.projection.bias"),
        entry("cls_token", "vit.embeddings.cls_token"),
        entry("pos_emb", "vit.embeddings.position_embeddings"),  # (1, N + 1, D), class token first
        *_linear("blocks.{i}.attn_norm", f"{_LAYER}.layernorm_before"),
        *_linear("blocks.{i}.attn.q_proj", f"{_LAYER}.attention.attention.query"),
        *_linear("blocks.{i}.attn.k_proj", f"{_LAYER}.attention.attention.key"),
        *_linear("blocks.{i}.attn.v_proj", f"{_LAYER}.attention.attention.value"),
        *_linear("blocks.{i}.attn.o_proj", f"{_LAYER}.attention.output.dense"),
        *_linear("blocks.{i}.ffn_norm", f"{_LAYER}.layernorm_after"),
        *_linear("blocks.{i}.ffn.up_proj", f"{_LAYER}.intermediate.dense"),
        *_linear("blocks.{i}.ffn.down_proj", f"{_LAYER}.output.dense"),
        *_linear("final_norm", "vit.layernorm"),
        *_linear("classifier", "classifier"),
    ),
    prefix="vit.",
    # Never read by ViTForImageClassification, so harmless to leave: the pooler and mask token
    # of checkpoints saved from a ViTModel or a masked-image-modeling head.
    ignore=("pooler.dense.weight", "pooler.dense.bias", "embeddings.mask_token"),
)


def _shapes(cfg: VisionConfig) -> Shapes:
    return Shapes(cfg.n_heads, cfg.n_kv_heads, cfg.head_size, cfg.patch_size)


# --- configs -------------------------------------------------------------------------------------
def _side(r: ConfigReader, key: str, default: int) -> int:
    """``image_size`` / ``patch_size``: an int, or a pair of equal ints (attnkit's images and
    patches are square)."""
    value = r.data.get(key, default)
    if isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
        return ConfigReader({key: value[0]}, r.path).get(key, int)
    if isinstance(value, list):
        raise r.error(key, "is not supported (attnkit's ViT takes square images and patches)")
    return r.get(key, int, default)


def vision_config_in(r: ConfigReader) -> VisionConfig:
    """The :class:`VisionConfig` computing what the ViT ``config.json`` in ``r`` describes."""
    if r.data.get("model_type") != "vit":
        raise r.error("model_type", "is not ViT (this importer reads ViT image classifiers)")
    classes = r.data.get("architectures") or [CLASS]
    classes = classes if isinstance(classes, list) else [classes]
    if CLASS not in classes:
        raise AttnkitError(f"{r.path}: architectures '{classes[0]}' is not supported (attnkit "
                           f"converts {CLASS})")
    act = r.require("hidden_act", "gelu", tuple(ACTIVATIONS),
                    f"attnkit knows {', '.join(ACTIVATIONS)}")
    r.require("qkv_bias", True, (True,), "attnkit's ViT has biases on every projection or none")
    n_labels = classifier_labels(r)
    fields = dict(
        image_size=_side(r, "image_size", 224), patch_size=_side(r, "patch_size", 16),
        channels=r.get("num_channels", int, 3), d_model=r.get("hidden_size", int),
        n_layers=r.get("num_hidden_layers", int), n_heads=r.get("num_attention_heads", int),
        ffn_hidden=r.get("intermediate_size", int), ffn=ACTIVATIONS[act],
        norm_eps=r.get("layer_norm_eps", float, 1e-12),  # ViTConfig's default, not attnkit's
        dropout=r.get("hidden_dropout_prob", float, 0.0),
        init_std=r.get("initializer_range", float, 0.02),
        n_labels=n_labels, pool="cls", pos="learned", norm="layernorm", norm_position="pre",
        bias=True,
    )
    try:
        return VisionConfig(**fields)
    except AttnkitError as e:
        raise AttnkitError(f"{r.path}: {e}") from None


def _needs(cfg: VisionConfig) -> list[tuple[str, Any, str]]:
    """(knob, the value(s) Hugging Face ViT needs, why), in the order they are checked."""
    return [
        ("pool", "cls", f"{CLASS} classifies from a class token"),
        ("pos", "learned", "Hugging Face ViT adds learned positions"),
        ("norm", "layernorm", "Hugging Face ViT normalises with LayerNorm"),
        ("norm_position", "pre", "Hugging Face ViT is pre-LN"),
        ("ffn", tuple(ACTIVATIONS_OUT), "Hugging Face ViT's MLP is not gated"),
        ("bias", True, "Hugging Face ViT's projections all have biases"),
        ("n_kv_heads", cfg.n_heads, "Hugging Face ViT has a key/value head per query head"),
    ]


def check_exportable(cfg: VisionConfig) -> None:
    """A one-line refusal naming the first knob Hugging Face ViT cannot express, and the fix."""
    for key, want, why in _needs(cfg):
        value = getattr(cfg, key)
        if value != want and not (isinstance(want, tuple) and value in want):
            shown = " or ".join(want) if isinstance(want, tuple) else want
            raise AttnkitError(f"cannot export model.{key}={value} as Hugging Face ViT: {why} "
                               f"(train with --model.{key}={shown})")


def vision_config_out(cfg: VisionConfig, labels: list[str] | None = None) -> dict[str, Any]:
    """A Hugging Face ``ViTForImageClassification`` ``config.json`` (as a dict) for ``cfg``;
    ``labels`` the class names in id order (default ``LABEL_i``)."""
    check_exportable(cfg)
    names = labels or [f"LABEL_{i}" for i in range(cfg.n_labels)]
    if len(names) != cfg.n_labels:
        raise AttnkitError(f"{len(names)} label names for a model of {cfg.n_labels} classes "
                           f"(give one name per class, in id order)")
    return {
        "architectures": [CLASS], "model_type": "vit",
        "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": cfg.channels,
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_hidden or ffn_hidden_size(cfg.d_model, cfg.ffn),
        "hidden_act": ACTIVATIONS_OUT[cfg.ffn],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "layer_norm_eps": cfg.norm_eps, "initializer_range": cfg.init_std, "qkv_bias": True,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


# --- import --------------------------------------------------------------------------------------
def from_hf_vit(path: str | Path, device: str = "cpu") -> Loaded:
    """Import a Hugging Face ``ViTForImageClassification`` folder as a
    :class:`~attnkit.models.ViT` in eval mode, float32.

    The :class:`Loaded` has no tokenizer, ``labels`` the class names (``id2label``, in id
    order), and a run config whose ``data.task`` is ``image``.
    """
    folder = Path(path)
    data = read_hf_config(folder)
    cfg = vision_config_in(ConfigReader(data, folder / "config.json"))
    model = ViT(cfg)
    expected = model_state(model)
    with HFWeights(folder, VIT.prefix) as weights:
        try:
            tensors, sources = import_tensors(VIT, weights.get, set(expected), cfg.n_layers,
                                              _shapes(cfg))
        except MissingTensor as e:
            raise AttnkitError(f"{weights.file_of(e.key)} has no tensor '{e.key}' (attnkit's "
                               f"'{e.ours}' needs it; the weights do not match config.json)") from None
        except ValueError as e:
            raise AttnkitError(f"{folder}: {e} (the weights do not match config.json)") from None
        used = set(sources.values())
        for key in weights.keys():
            if key not in used and VIT.prefix + key not in used and not key.endswith(VIT.ignore):
                raise AttnkitError(f"{weights.file_of(key)}: unexpected tensor '{key}' (not part of "
                                   f"a {CLASS} with this config.json; attnkit does not convert it)")
        weights.check_shapes(tensors, expected, sources, note=lambda src: (
            f" flattened from {tuple(weights.get(src).shape)}" if src == _CONV else ""))
    model.load_state_dict({k: t.float() for k, t in tensors.items()})  # strict: the map covers all
    model.to(resolve_device(device)).eval()
    id2label = data.get("id2label") or {}
    labels = [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(cfg.n_labels)]
    # data.task image: attnkit.load of the converted run then expects no tokenizer
    return Loaded(model, None, RunConfig(model=cfg, data=DataConfig(task="image")),
                  labels=labels, source=folder)


# --- export --------------------------------------------------------------------------------------
def to_hf_vit(run: Loaded | nn.Module, path: str | Path, labels: list[str] | None = None,
              tokenizer=None) -> str:
    """Write ``run`` (a :class:`Loaded` of a :class:`~attnkit.models.ViT`, or the bare model)
    as a Hugging Face ``ViTForImageClassification`` folder that ``transformers``'
    ``from_pretrained`` loads; returns the class written.

    The folder (which must not exist or be empty) gets ``config.json`` and
    ``model.safetensors``; ``id2label`` is ``labels``, else the Loaded's, else ``LABEL_i``.
    ``tokenizer`` is there so :func:`~attnkit.interop.hf.to_hf` can call every exporter
    alike; an image model has none to give.
    """
    model, tokenizer, labels, _ = unpack(run, tokenizer, labels)
    if tokenizer is not None:
        raise AttnkitError("a ViT reads images: there is no tokenizer to export (drop tokenizer=)")
    cfg = model.cfg
    config = vision_config_out(cfg, labels or None)
    tensors = export_tensors(VIT, model_state(model), cfg.n_layers, _shapes(cfg))
    with atomic_dir(Path(path)) as tmp:
        write_json(tmp / "config.json", config)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return CLASS
