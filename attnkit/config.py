"""Typed configuration: dataclasses, presets, recipes and ``--section.key=value`` overrides.

One flow everywhere: dataclass defaults -> recipe file -> command-line
overrides. Every way in is strict: an unknown key or a value of the wrong
type raises :class:`~attnkit.errors.AttnkitError` naming the closest valid
key. The resolved config is written into every run and checkpoint.

This module imports neither torch nor any model code, so everything else may
import it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from attnkit.errors import AttnkitError

# the back-ends attnkit.backends applies (the trainer's --train.backend, the commands' --backend)
Backend = Literal["auto", "plain", "onednn"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)

Norm = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
FFN = Literal["gelu", "gelu_tanh", "relu", "swiglu", "geglu"]
Pos = Literal["learned", "sinusoidal", "rope", "alibi", "none"]

# --- presets: a style fixes the architecture's choices, a size its dimensions ----------
STYLES: dict[str, dict[str, Any]] = {
    # GPT-2 (Radford et al., 2019): learned positions, pre-LN LayerNorm, GELU, tied embeddings.
    "gpt2": dict(pos="learned", norm="layernorm", norm_position="pre", ffn="gelu",
                 bias=True, tie_embeddings=True),
    # Llama (Touvron et al., 2023): RoPE, RMSNorm, SwiGLU, no biases, GQA (half the kv heads).
    "llama": dict(pos="rope", norm="rmsnorm", norm_position="pre", ffn="swiglu",
                  bias=False, tie_embeddings=False, kv_heads_ratio=2),
    # The 2017 paper's decoder stack: sinusoidal positions, post-LN, ReLU.
    "original": dict(pos="sinusoidal", norm="layernorm", norm_position="post", ffn="relu",
                     bias=True, tie_embeddings=True),
}
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layers=2, n_heads=4, d_model=64, context_length=128),
    "mini": dict(n_layers=4, n_heads=4, d_model=128, context_length=256),
    "small": dict(n_layers=6, n_heads=6, d_model=384, context_length=256),
    "medium": dict(n_layers=8, n_heads=8, d_model=512, context_length=512),
    "gpt2-124m": dict(n_layers=12, n_heads=12, d_model=768, context_length=1024),
}


@dataclass
class TransformerConfig:
    """The knobs every Transformer family shares. Every choice is a name from a small table."""

    family: str = "decoder"  # decoder | seq2seq | encoder | lstm | vit: picks the dataclass
    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    context_length: int = 128
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: n_heads (MHA); fewer: GQA; 1: MQA
    ffn_hidden: int | None = None  # None: 4 * d_model, or 2/3 of that for GLU variants
    norm: Norm = "layernorm"
    norm_position: NormPosition = "pre"
    norm_eps: float = 1e-5
    ffn: FFN = "gelu"
    pos: Pos = "learned"
    rope_theta: float = 10000.0
    dropout: float = 0.0
    bias: bool = True
    attention: Literal["sdpa", "eager"] = "sdpa"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("context_length", "d_model", "n_heads", "n_kv_heads", *self._layer_fields()):
            if getattr(self, name) < 1:
                raise AttnkitError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise AttnkitError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads} "
                f"(choose d_model as a multiple of n_heads)")
        if self.n_heads % self.n_kv_heads:
            raise AttnkitError(
                f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads="
                f"{self.n_kv_heads} (each kv head must serve a whole group of query heads)")
        if self.pos == "rope" and self.head_size % 2:
            raise AttnkitError(
                f"rope needs an even head size, but d_model/n_heads = {self.head_size} "
                f"(change model.d_model or model.n_heads)")
        if not 0.0 <= self.dropout < 1.0:
            raise AttnkitError(f"model.dropout must be in [0, 1), got {self.dropout}")

    def _layer_fields(self) -> tuple[str, ...]:
        return tuple(f for f in ("n_layers", "n_encoder_layers", "n_decoder_layers")
                     if hasattr(self, f))

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class DecoderConfig(TransformerConfig):
    """A decoder-only Transformer (GPT-2 / Llama style)."""

    family: Literal["decoder"] = "decoder"
    style: str | None = None  # a key of STYLES, applied under the explicit keys
    size: str | None = None  # a key of SIZES, applied under the explicit keys
    n_layers: int = 4
    tie_embeddings: bool = True
    # Multiply token embeddings by sqrt(d_model), initialised at N(0, 1/d_model) so the
    # product has unit scale - the scale of the sinusoids added to it (2017 paper, 3.4).
    # None: on exactly when pos is sinusoidal; without it the fixed unit-size sinusoids
    # drown the 0.02-scale token embeddings.
    scale_embeddings: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale_embeddings is None:
            self.scale_embeddings = self.pos == "sinusoidal"


ModelConfig = DecoderConfig  # the first family's config keeps its original name


@dataclass
class Seq2SeqConfig(TransformerConfig):
    """The encoder-decoder of *Attention Is All You Need*; its defaults are the paper's."""

    family: Literal["seq2seq"] = "seq2seq"
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    norm_position: NormPosition = "post"
    ffn: FFN = "relu"
    pos: Pos = "sinusoidal"
    dropout: float = 0.1
    share_embeddings: bool = True  # source, target and output embeddings are one matrix (3.4)
    scale_embeddings: bool = True  # multiply embeddings by sqrt(d_model) (3.4)
    embedding_norm: bool = False  # a norm after embedding + position (BART)
    label_smoothing: float = 0.1  # (5.4)


@dataclass
class EncoderConfig(TransformerConfig):
    """A bidirectional encoder (BERT style): masked-LM pretraining, classification, embeddings."""

    family: Literal["encoder"] = "encoder"
    n_layers: int = 4
    norm_position: NormPosition = "post"
    type_vocab_size: int = 0  # BERT's segment embeddings (2); 0: none
    embedding_norm: bool = True  # BERT normalises embedding + position + segment
    n_labels: int = 0  # > 0 adds a sequence-classification head
    pooling: Literal["mean", "cls"] = "mean"  # what the classifier sees: mean of real tokens | first
    tie_embeddings: bool = True  # the MLM output layer shares the token embedding
    mlm_head: bool = True  # BERT's masked-LM head (off for imported BertModel / classifiers)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.type_vocab_size < 0:
            raise AttnkitError(f"model.type_vocab_size must be 0 (no segments) or more, got "
                               f"{self.type_vocab_size}")
        if self.n_labels < 0 or self.n_labels == 1:
            raise AttnkitError(f"model.n_labels must be 0 (no classifier) or at least 2, got "
                               f"{self.n_labels}")


@dataclass
class LSTMConfig:
    """The recurrent baseline: embedding -> stacked LSTM -> output layer."""

    family: Literal["lstm"] = "lstm"
    vocab_size: int = 0
    context_length: int = 128  # training window (the LSTM itself has no length limit)
    d_model: int = 256
    n_layers: int = 2
    dropout: float = 0.0
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("context_length", "d_model", "n_layers"):
            if getattr(self, name) < 1:
                raise AttnkitError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise AttnkitError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class VisionConfig(TransformerConfig):
    """A vision Transformer (ViT, Dosovitskiy et al. 2020): an image cut into non-overlapping
    ``patch_size`` x ``patch_size`` patches, each projected to ``d_model``, then the encoder
    stack. ``context_length`` is derived: one position per patch, plus the class token."""

    family: Literal["vit"] = "vit"
    image_size: int = 8  # square images of image_size x image_size pixels
    patch_size: int = 2
    channels: int = 0  # 1: grey, 3: RGB; 0: taken from the data when training starts
    n_layers: int = 4
    n_labels: int = 0  # 0: taken from the data's classes when training starts
    pool: Literal["cls", "mean"] = "cls"  # what the classifier sees: a class token | mean of patches
    pos: Pos = "learned"  # learned | sinusoidal (2-D, fixed) | none
    ffn: FFN = "gelu"
    norm_eps: float = 1e-6  # timm's and transformers' ViT
    label_smoothing: float = 0.0  # of the training loss (Szegedy et al. 2016)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size"):
            if getattr(self, name) < 1:
                raise AttnkitError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.channels not in (0, 1, 3):
            raise AttnkitError(f"model.channels must be 1 (grey), 3 (RGB) or 0 (from the data), "
                               f"got {self.channels}")
        if self.image_size % self.patch_size:
            fits = [p for p in range(1, self.image_size + 1) if self.image_size % p == 0]
            raise AttnkitError(f"model.patch_size={self.patch_size} does not divide "
                               f"model.image_size={self.image_size} (choose one of "
                               f"{', '.join(map(str, fits))})")
        if self.pos not in ("learned", "sinusoidal", "none"):
            raise AttnkitError(f"model.pos={self.pos} is not for images (choose learned, "
                               f"sinusoidal or none)")
        if self.n_labels < 0 or self.n_labels == 1:
            raise AttnkitError(f"model.n_labels must be 0 (from the data) or at least 2, got "
                               f"{self.n_labels}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise AttnkitError(f"model.label_smoothing must be in [0, 1), got "
                               f"{self.label_smoothing}")
        self.context_length = self.n_patches + (self.pool == "cls")
        super().__post_init__()

    @property
    def grid(self) -> int:
        """Patches along each side."""
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid


FAMILY_CONFIGS: dict[str, type] = {
    "decoder": DecoderConfig, "seq2seq": Seq2SeqConfig, "encoder": EncoderConfig,
    "lstm": LSTMConfig, "vit": VisionConfig,
}
AnyModelConfig = DecoderConfig | Seq2SeqConfig | EncoderConfig | LSTMConfig | VisionConfig
#: The training tasks each family can do; the first is the default (data.task=auto).
FAMILY_TASKS: dict[str, tuple[str, ...]] = {
    "decoder": ("lm", "modular", "series"), "lstm": ("lm", "modular"), "seq2seq": ("seq2seq",),
    "encoder": ("mlm", "classify"),
    "vit": ("image",),
}


#: The largest train.seed: torch seeds take 64 bits, and the trainer adds a rank and a step to it.
MAX_SEED = 2**63 - 1


@dataclass
class TrainConfig:
    """The optimisation loop. ``batch_size`` is sequences per optimizer step, summed over all
    ranks of a distributed run (each takes ``batch_size / world_size``)."""

    steps: int = 1500  # the default run: ~5 minutes on 2 CPU cores
    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per step; each holds batch_size / grad_accum sequences
    lr: float = 2e-3
    min_lr: float | None = None  # None: lr / 10
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant", "noam"] = "cosine"  # noam: the 2017 paper's (5.3)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_every: int = 250
    eval_batches: int = 20
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    # the speed-ups applied to the built model (attnkit.backends): auto = oneDNN on a CPU that
    # has it; plain = the model as written (also ATTNKIT_BACKEND=plain)
    backend: Backend = "auto"
    # Data parallelism under torchrun (docs/distributed.md). auto: ddp when WORLD_SIZE > 1.
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    activation_checkpointing: bool = False  # recompute each block in backward: less memory
    keep_checkpoints: int = 3  # the newest K complete checkpoints are kept
    # Guards (attnkit/train/guards.py): a non-finite loss or gradient skips the update; this
    # many in a row stop the run. spike_zscore > 0 also skips updates whose loss is that many
    # standard deviations above the recent mean.
    max_bad_steps: int = 5
    spike_zscore: float = 0.0
    samples: int = 3  # samples printed at the end of training
    sample_tokens: int = 200

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "checkpoint_every",
                     "log_every", "eval_batches", "keep_checkpoints", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise AttnkitError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise AttnkitError(
                f"train.batch_size={self.batch_size} is not divisible by train.grad_accum="
                f"{self.grad_accum} (each micro-batch must have the same size)")
        if self.lr <= 0:
            raise AttnkitError(f"train.lr must be positive, got {self.lr}")
        for name in ("warmup_steps", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                what = " (0 disables clipping)" if name == "grad_clip" else ""
                raise AttnkitError(f"train.{name} must be 0 or more{what}, got {getattr(self, name)}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise AttnkitError(f"train.min_lr must be in [0, train.lr={self.lr}], got {self.min_lr} "
                               f"(the schedule decays from lr down to min_lr)")
        for name in ("beta1", "beta2"):  # Adam's moving averages: a weight in [0, 1)
            if not 0 <= getattr(self, name) < 1:
                raise AttnkitError(f"train.{name} must be in [0, 1), got {getattr(self, name)} "
                                   f"(typical: beta1=0.9, beta2=0.95 to 0.999)")
        if not 0 <= self.seed <= MAX_SEED:
            raise AttnkitError(f"train.seed must be an integer from 0 to 2**63 - 1, got {self.seed}")
        if self.spike_zscore < 0:
            raise AttnkitError(f"train.spike_zscore must be 0 (off) or positive, got "
                               f"{self.spike_zscore}")


@dataclass
class DataConfig:
    """Where text comes from and how it becomes tokens."""

    path: str = "pydoc"  # "pydoc" (built in), a text file, a folder, or a synthetic task
    # auto: the family's first (modular for data.path=modular:OP)
    task: Literal["auto", "lm", "seq2seq", "mlm", "classify", "image", "modular", "series"] = "auto"
    tokenizer: str = "char"  # char | byte | bpe | gpt2 | path to a tokenizer.json (or its folder)
    vocab_size: int | None = None  # bpe: None is 2048; format=ids: None measures it from the data
    val_fraction: float = 0.1  # the last fraction of the token stream is validation
    cache_dir: str | None = None  # token files; None: $ATTNKIT_CACHE or ~/.cache/attnkit/tokens
    # task lm: score only the token right after each occurrence of this one-token marker
    # (e.g. "=" in "question=answer" data); None scores every token
    loss_after: str | None = None

    mlm_probability: float = 0.15  # task mlm: fraction of tokens masked (BERT)
    augment: int = 0  # task image: shift each training image by up to this many pixels
    # task series: kernelsynth and/or series files in data.path (comma-separated)
    column: str | None = None  # task series: the CSV column; None: every numeric one
    nan: Literal["refuse", "interpolate"] = "refuse"  # task series: missing values
    horizon: int = 24  # task series: values forecast after each context
    bins: int = 4094  # task series: uniform bins over [-15, 15] (Chronos)
    # --- integer-token files (issue 18; attnkit/data/ids.py) ---
    # text: data.path is text for the tokenizer; ids: a .npy/.npz/.txt of integer ids, or a folder
    format: Literal["text", "ids"] = "text"
    # format=ids: the id that ends each document (a 1-D stream is split by it, rows and lines are
    # joined with it); None adds one end-of-document id after the vocabulary
    separator_id: int | None = None
    # --- end integer-token files ---

    def __post_init__(self) -> None:
        kinds = ("char", "byte", "bpe", "gpt2")
        if self.tokenizer not in kinds and not _looks_like_path(self.tokenizer):
            close = difflib.get_close_matches(self.tokenizer, kinds, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise AttnkitError(f"data.tokenizer must be one of {', '.join(kinds)} or a path to a "
                               f"tokenizer.json, got {self.tokenizer!r}{hint}")
        if not 0.0 < self.val_fraction < 1.0:
            raise AttnkitError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        # --- integer-token files (issue 18) ---
        if self.format not in ("text", "ids"):
            raise AttnkitError(f"data.format must be text or ids, got {self.format!r}")
        if self.separator_id is not None and self.separator_id < 0:
            raise AttnkitError(f"data.separator_id must be a non-negative id, got {self.separator_id}")
        if self.format == "ids" and self.vocab_size is not None and self.vocab_size < 1:
            raise AttnkitError(f"data.vocab_size must be positive, got {self.vocab_size}")
        # --- end integer-token files ---


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.endswith(".json") or Path(spec).exists()


@dataclass
class RunConfig:
    model: AnyModelConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        family, task = self.model.family, self.data.task
        if task == "auto":  # the family's natural task; modular:OP data is its own task
            modular = self.data.path.startswith("modular:") and "modular" in FAMILY_TASKS[family]
            self.data.task = "modular" if modular else FAMILY_TASKS[family][0]
        elif task not in FAMILY_TASKS[family]:
            owner = next(f for f, tasks in FAMILY_TASKS.items() if task in tasks)
            raise AttnkitError(f"data.task={task} does not fit model.family={family} (add "
                               f"--model.family={owner} for {task}, or use data.task="
                               f"{' or '.join(FAMILY_TASKS[family])})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SECTIONS: dict[str, type] = {"model": DecoderConfig, "train": TrainConfig, "data": DataConfig}


# --- building dataclasses strictly --------------------------------------------------------

def all_keys() -> list[str]:
    """Every valid dotted key, e.g. ``train.steps`` (model keys of every family)."""
    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() if s != "model"
            for f in dataclasses.fields(cls)]
    model = dict.fromkeys(f"model.{f.name}" for cls in FAMILY_CONFIGS.values()
                          for f in dataclasses.fields(cls))
    return list(model) + keys


def _unknown(key: str) -> AttnkitError:
    leaf = key.split(".")[-1]
    candidates = all_keys() + list(SECTIONS)
    # the exact leaf in another section first (train.d_model -> model.d_model, not train.lr)
    close = [k for k in all_keys() if k.split(".")[-1] == leaf and "." in key][:1]
    if not close:
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(leaf, [k.split(".")[-1] for k in all_keys()], n=1)
        close = [k for k in all_keys() if close and k.endswith("." + close[0])][:1]
    hint = f" (did you mean '{close[0]}'?)" if close else " (see `attnkit train --help`)"
    return AttnkitError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; strings from the command line are parsed."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except AttnkitError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise AttnkitError(f"{key} must be one of {', '.join(choices)}, got {value!r}{hint}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise AttnkitError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
            try:  # 1e4 or 2000.0 are fine if they are whole numbers
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise AttnkitError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                pass
        if number is None:
            raise AttnkitError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(number):  # nan or inf never make sense as a knob, and poison training
            raise AttnkitError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise AttnkitError(f"{key} must be a string, got {value!r}")
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def build(cls: type, data: dict[str, Any], section: str) -> Any:
    """Construct dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise AttnkitError(f"config section '{section}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            owners = [fam for fam, c in FAMILY_CONFIGS.items()
                      if key in {f.name for f in dataclasses.fields(c)}]
            if section == "model" and owners:
                raise AttnkitError(f"model.{key} does not apply to the {data.get('family', 'decoder')} "
                                   f"family (it belongs to {', '.join(owners)}; set "
                                   f"--model.family accordingly or drop the key)")
            raise _unknown(f"{section}.{key}")
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def expand_presets(model: dict[str, Any]) -> dict[str, Any]:
    """Apply ``style`` and ``size`` under the explicitly given model keys."""
    out: dict[str, Any] = {}
    for kind, table in (("size", SIZES), ("style", STYLES)):
        name = model.get(kind)
        if name is None:
            continue
        if not isinstance(name, str) or name not in table:
            close = difflib.get_close_matches(str(name), list(table), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AttnkitError(f"unknown model.{kind} '{name}'; choose from "
                               f"{', '.join(table)}{hint}")
        out.update(table[name])
    out.update(model)
    ratio = out.pop("kv_heads_ratio", None)
    if ratio and "n_kv_heads" not in model:
        n_heads = _coerce("model.n_heads", out.get("n_heads", ModelConfig.n_heads), int)
        out["n_kv_heads"] = n_heads // ratio if n_heads % ratio == 0 else n_heads
    return out


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from a nested dict (a recipe, a saved run's config)."""
    if not isinstance(data, dict):
        raise AttnkitError(f"a config must be a mapping of sections, got {type(data).__name__}")
    for section, body in data.items():
        if section not in SECTIONS:
            raise _unknown(str(section))
        _check_section(section, body)
    model = dict(data.get("model") or {})
    family = model.get("family", "decoder")
    if not isinstance(family, str) or family not in FAMILY_CONFIGS:
        close = difflib.get_close_matches(str(family), list(FAMILY_CONFIGS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise AttnkitError(f"model.family must be one of {', '.join(FAMILY_CONFIGS)}, got "
                           f"{family!r}{hint}")
    if family == "decoder":
        model = expand_presets(model)
    return RunConfig(
        model=build(FAMILY_CONFIGS[family], model, "model"),
        train=build(TrainConfig, dict(data.get("train") or {}), "train"),
        data=build(DataConfig, dict(data.get("data") or {}), "data"),
    )


def _check_section(section: str, body: Any) -> None:
    if body is not None and not isinstance(body, dict):
        raise AttnkitError(f"config section '{section}' must be a mapping of keys to values, "
                           f"got {body!r} (write e.g. '{section}:' then indented 'key: value' lines)")


# --- recipes and overrides ----------------------------------------------------------------

def recipe_dirs() -> list[Path]:
    """Where recipe names are looked up: the repository's ``recipes/`` and the packaged copy."""
    here = Path(__file__).resolve().parent
    return [here.parent / "recipes", here / "recipes"]


def list_recipes() -> list[str]:
    names = {p.stem for d in recipe_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Read a recipe by name (``shakespeare-char``) or path (``my.yaml``) into a nested dict."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        found = [d / f"{name_or_path}.yaml" for d in recipe_dirs()]
        found = [p for p in found if p.is_file()]
        if not found:
            if path.suffix in (".yaml", ".yml"):
                raise AttnkitError(f"recipe file not found: {name_or_path}")
            names = list_recipes()
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise AttnkitError(f"unknown recipe '{name_or_path}' ({hint}available: "
                               f"{', '.join(names) or 'none'}; or pass a path to a .yaml file)")
        path = found[0]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise AttnkitError(f"recipe {path} is not valid YAML{where} (fix the file)") from None
    if not isinstance(data, dict):
        raise AttnkitError(f"recipe {path} must be a mapping of sections (model:, train:, data:)")
    data.pop("description", None)
    return data


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--train.steps=10", "--model.pos", "rope"]`` -> ``{"train.steps": "10", "model.pos": "rope"}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=")[0]:
            raise AttnkitError(f"cannot parse argument '{arg}' (overrides look like "
                               f"--section.key=value, e.g. --train.steps=100)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        else:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise AttnkitError(f"override '{arg}' has no value (write {arg}=VALUE)")
            key, value = arg[2:], args[i + 1]
            i += 1
        if key.count(".") != 1:
            raise _unknown(key)
        out[key] = value
        i += 1
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict; unknown keys are rejected here, types in :func:`build`."""
    for section, body in data.items():
        _check_section(str(section), body)
    data = {s: dict(v or {}) for s, v in data.items()}
    valid = set(all_keys())
    for key, value in overrides.items():
        if key not in valid:
            raise _unknown(key)
        section, leaf = key.split(".")
        data.setdefault(section, {})[leaf] = value
    return data


def resolve(recipe: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """defaults -> recipe -> overrides, validated."""
    data = load_recipe(recipe) if recipe else {}
    return config_from_dict(apply_overrides(data, overrides or {}))
