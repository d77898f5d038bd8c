"""The encoder family <-> Hugging Face BERT: the key map and the config mapping, both ways.

BERT's layout *is* the encoder's - post-LN blocks, separate q/k/v matrices,
learned positions, segment embeddings, a LayerNorm after the embedding sum - so
every row of :data:`BERT` is a plain copy (no tensor transforms). Hugging Face's
``"gelu"`` is the exact erf GELU, which is attnkit's ``gelu``.

Four Hugging Face classes are understood:

- ``BertModel``: the base; its keys carry no ``bert.`` prefix (``HFWeights`` finds them);
- ``BertForMaskedLM`` (and ``BertForPreTraining``, whose next-sentence head is dropped):
  the base under ``bert.`` plus ``cls.predictions.*`` -> the encoder's MLM head;
- ``BertForSequenceClassification``: the base and its pooler plus ``classifier.*``,
  imported with ``pooling="cls"`` - exactly Hugging Face's head.

::

    run = from_hf_bert("all-MiniLM-L6-v2/")   # a Loaded: run.model (an Encoder), run.tokenizer
    to_hf_bert(run, "exported/")               # config.json, model.safetensors (+ tokenizer)

Like the rest of :mod:`attnkit.interop`, only JSON and safetensors are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from attnkit.config import DataConfig, EncoderConfig, RunConfig
from attnkit.devices import resolve_device
from attnkit.errors import AttnkitError
from attnkit.interop.decoder import ConfigReader
from attnkit.interop.io import HFWeights, atomic_dir, folder_tokenizer, read_hf_config, tokenizer_config
from attnkit.interop.keymap import KeyMap, MissingTensor, Shapes, entry, export_tensors, import_tensors
from attnkit.interop.loaded import Loaded, unpack
from attnkit.models.encoder import Encoder
from attnkit.runs import write_json
from attnkit.weights import model_state


def _linear(ours: str, theirs: str) -> tuple:
    """A Linear or LayerNorm: its weight and its bias."""
    return entry(f"{ours}.weight", f"{theirs}.weight"), entry(f"{ours}.bias", f"{theirs}.bias")


_LAYER = "bert.encoder.layer.{i}"

#: BERT in every direction: (attnkit name, Hugging Face name), no transforms.
BERT = KeyMap(
    entries=(
        entry("tok_emb.weight", "bert.embeddings.word_embeddings.weight"),
        entry("pos_emb.weight", "bert.embeddings.position_embeddings.weight"),
        entry("seg_emb.weight", "bert.embeddings.token_type_embeddings.weight"),
        *_linear("emb_norm", "bert.embeddings.LayerNorm"),
        *_linear("blocks.{i}.attn.q_proj", f"{_LAYER}.attention.self.query"),
        *_linear("blocks.{i}.attn.k_proj", f"{_LAYER}.attention.self.key"),
        *_linear("blocks.{i}.attn.v_proj", f"{_LAYER}.attention.self.value"),
        *_linear("blocks.{i}.attn.o_proj", f"{_LAYER}.attention.output.dense"),
        *_linear("blocks.{i}.attn_norm", f"{_LAYER}.attention.output.LayerNorm"),
        *_linear("blocks.{i}.ffn.up_proj", f"{_LAYER}.intermediate.dense"),
        *_linear("blocks.{i}.ffn.down_proj", f"{_LAYER}.output.dense"),
        *_linear("blocks.{i}.ffn_norm", f"{_LAYER}.output.LayerNorm"),
        *_linear("pooler", "bert.pooler.dense"),
        *_linear("mlm_head.dense", "cls.predictions.transform.dense"),
        *_linear("mlm_head.norm", "cls.predictions.transform.LayerNorm"),
        entry("mlm_head.out.weight", "cls.predictions.decoder.weight"),  # untied models only
        entry("mlm_head.out.bias", "cls.predictions.bias"),
        *_linear("classifier", "classifier"),
    ),
    prefix="bert.",
    # Read by no row, yet harmless to leave: buffers, the pooler of a BertModel imported for its
    # embeddings, BertForPreTraining's next-sentence head, the decoder's tied duplicates.
    ignore=("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias",
            "cls.seq_relationship.weight", "cls.seq_relationship.bias",
            "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"),
)

#: Hugging Face class -> the head it carries.
CLASSES = {"BertModel": "base", "BertForMaskedLM": "mlm", "BertForPreTraining": "mlm",
           "BertForSequenceClassification": "classify"}
HEADS = {"base": "BertModel", "mlm": "BertForMaskedLM", "classify": "BertForSequenceClassification"}
#: hidden_act -> ffn, and back.
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh"}
ACTIVATIONS_OUT = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_new"}


# --- configs -------------------------------------------------------------------------------------
def head_of(data: dict[str, Any], path: Path | str = "config.json") -> str:
    """The head (``base``, ``mlm``, ``classify``) the config's ``architectures`` names."""
    classes = data.get("architectures") or ["BertModel"]
    if not isinstance(classes, list):
        classes = [classes]
    for c in classes:
        if c in CLASSES:
            return CLASSES[c]
    raise AttnkitError(f"{path}: architectures '{classes[0]}' is not supported (attnkit converts "
                       f"{', '.join(CLASSES)})")



def classifier_labels(r: ConfigReader) -> int:
    """The number of classes of a Hugging Face sequence or image classifier's config
    (``id2label``, else ``num_labels``), refusing a regression head."""
    n_labels = len(r.get("id2label", dict, {})) or r.get("num_labels", int, 2)
    if n_labels < 2 or r.data.get("problem_type") == "regression":
        raise r.error("problem_type", "is a regression head (attnkit imports classifiers of at "
                                      "least two labels)")
    return n_labels


def encoder_config_in(r: ConfigReader) -> EncoderConfig:
    """The :class:`EncoderConfig` computing what the BERT ``config.json`` in ``r`` describes."""
    if r.data.get("model_type") != "bert":
        raise r.error("model_type", "is not BERT (this importer reads BERT encoders)")
    act = r.require("hidden_act", "gelu", tuple(ACTIVATIONS), f"attnkit knows "
                    f"{', '.join(ACTIVATIONS)}")
    r.require("position_embedding_type", "absolute", ("absolute",),
              "attnkit's BERT has absolute learned positions")
    r.require("is_decoder", False, (False,), "attnkit's encoder is bidirectional")
    head = head_of(r.data, r.path)
    n_labels = classifier_labels(r) if head == "classify" else 0
    fields = dict(
        vocab_size=r.get("vocab_size", int), d_model=r.get("hidden_size", int),
        n_layers=r.get("num_hidden_layers", int), n_heads=r.get("num_attention_heads", int),
        ffn_hidden=r.get("intermediate_size", int), ffn=ACTIVATIONS[act],
        context_length=r.get("max_position_embeddings", int, 512),
        type_vocab_size=r.get("type_vocab_size", int, 2),
        norm_eps=r.get("layer_norm_eps", float, 1e-12),
        dropout=r.get("hidden_dropout_prob", float, 0.1),
        init_std=r.get("initializer_range", float, 0.02),
        pos="learned", norm="layernorm", norm_position="post", bias=True, embedding_norm=True,
        tie_embeddings=r.get("tie_word_embeddings", bool, True),
        mlm_head=head == "mlm", n_labels=n_labels, pooling="cls" if n_labels else "mean",
    )
    try:
        return EncoderConfig(**fields)
    except AttnkitError as e:
        raise AttnkitError(f"{r.path}: {e}") from None


def check_exportable(cfg: EncoderConfig) -> None:
    """A one-line refusal naming the first knob BERT cannot express."""
    needs = [("pos", "learned"), ("norm", "layernorm"), ("norm_position", "post"),
             ("bias", True), ("embedding_norm", True), ("n_kv_heads", cfg.n_heads),
             ("ffn", tuple(ACTIVATIONS_OUT))]
    for key, want in needs:
        value = getattr(cfg, key)
        if value != want and not (isinstance(want, tuple) and value in want):
            shown = " or ".join(want) if isinstance(want, tuple) else want
            raise AttnkitError(f"cannot export model.{key}={value} as Hugging Face BERT: it needs "
                               f"model.{key}={shown}")


def encoder_config_out(cfg: EncoderConfig, head: str = "base", labels: list[str] | None = None,
                       specials: dict[str, int] | None = None) -> dict[str, Any]:
    """A Hugging Face BERT ``config.json`` (as a dict) for ``cfg`` with ``head``."""
    check_exportable(cfg)
    out: dict[str, Any] = {
        "architectures": [HEADS[head]], "model_type": "bert",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.ffn_hidden or 4 * cfg.d_model,
        "hidden_act": ACTIVATIONS_OUT[cfg.ffn],
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.context_length,
        # BERT always adds a token-type row: a model without segments exports one row of zeros.
        "type_vocab_size": max(cfg.type_vocab_size, 1),
        "layer_norm_eps": cfg.norm_eps, "initializer_range": cfg.init_std,
        "position_embedding_type": "absolute", "tie_word_embeddings": cfg.tie_embeddings,
        "pad_token_id": (specials or {}).get("pad", 0),
    }
    if head == "classify":
        names = labels or [f"LABEL_{i}" for i in range(cfg.n_labels)]
        out["id2label"] = {str(i): n for i, n in enumerate(names)}
        out["label2id"] = {n: i for i, n in enumerate(names)}
    return out


# --- import --------------------------------------------------------------------------------------
def from_hf_bert(path: str | Path, device: str = "cpu") -> Loaded:
    """Import a Hugging Face BERT folder as an :class:`~attnkit.models.Encoder` in eval mode.

    The :class:`Loaded` holds, as :func:`attnkit.load` gives them: the folder's
    ``tokenizer.json`` (kind ``hf``; None without one), the run config, and ``labels``, the
    class names of a classifier (``id2label``; None for other heads).
    """
    folder = Path(path)
    data = read_hf_config(folder)
    cfg = encoder_config_in(ConfigReader(data, folder / "config.json"))
    model = Encoder(cfg)
    expected = model_state(model)  # tied tensors once
    with HFWeights(folder, BERT.prefix) as weights:
        def get(name: str) -> torch.Tensor | None:
            # The output layer adds its own bias; untied (transformers 5) it may differ from
            # cls.predictions.bias, which is only its tied twin, so it is preferred.
            if name == "cls.predictions.bias" and weights.resolve("cls.predictions.decoder.bias"):
                name = "cls.predictions.decoder.bias"
            return weights.get(name)

        shapes = Shapes(cfg.n_heads, cfg.n_kv_heads, cfg.head_size)
        try:
            tensors, sources = import_tensors(BERT, get, set(expected), cfg.n_layers, shapes)
        except MissingTensor as e:
            raise AttnkitError(f"{weights.file_of(e.key)} has no tensor '{e.key}' (attnkit's "
                               f"'{e.ours}' needs it; the weights do not match config.json)") from None
        used = set(sources.values())
        for key in weights.keys():
            if key not in used and BERT.prefix + key not in used and not key.endswith(BERT.ignore):
                raise AttnkitError(f"{weights.file_of(key)}: unexpected tensor '{key}' (not part of "
                                   f"a {data.get('architectures', ['BertModel'])[0]} with this "
                                   f"config.json; attnkit does not convert it)")
        weights.check_shapes(tensors, expected, sources)
    model.load_state_dict({k: t.float() for k, t in tensors.items()}, strict=False)
    model.to(resolve_device(device)).eval()
    id2label = data.get("id2label") or {}
    labels = [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(cfg.n_labels)] or None
    return Loaded(model, folder_tokenizer(folder),
                  RunConfig(model=cfg, data=DataConfig(tokenizer=str(folder.resolve()))),
                  labels=labels, source=folder)


# --- export --------------------------------------------------------------------------------------
def _default_head(cfg: EncoderConfig) -> str:
    return "classify" if cfg.n_labels else "mlm" if cfg.mlm_head else "base"


def hf_tensors(model: nn.Module, head: str) -> dict[str, torch.Tensor]:
    """The Hugging Face tensors of ``model`` as the class of ``head``."""
    cfg = model.cfg
    drop = {"base": ("mlm_head.", "classifier."), "mlm": ("pooler.", "classifier."),
            "classify": ("mlm_head.",)}[head]
    state = {k: t for k, t in model_state(model).items() if not k.startswith(drop)}
    out = export_tensors(BERT, state, cfg.n_layers, Shapes(cfg.n_heads, cfg.n_kv_heads,
                                                           cfg.head_size))
    if cfg.type_vocab_size == 0:  # the zero segment row the exported config declares
        out["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(1, cfg.d_model)
    if head == "mlm" and not cfg.tie_embeddings:  # untied, Hugging Face keeps the bias twice
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    if head == "base":  # BertModel's own names have no prefix
        out = {k.removeprefix(BERT.prefix): t for k, t in out.items()}
    return out


def to_hf_bert(run: Loaded | nn.Module, path: str | Path, head: str | None = None,
               tokenizer=None, labels: list[str] | None = None) -> str:
    """Write ``run`` (a :class:`Loaded` of an :class:`~attnkit.models.Encoder`, or the bare
    model) as a Hugging Face BERT folder that ``transformers``' ``from_pretrained`` loads;
    returns the class written.

    ``head``: ``base`` (``BertModel``), ``mlm`` (``BertForMaskedLM``) or ``classify``
    (``BertForSequenceClassification``); by default the classifier if the model has one,
    else the MLM head if it has one, else the base. The folder (which must not exist or be
    empty) gets ``config.json``, ``model.safetensors`` and, for a Hugging Face tokenizer
    (``tokenizer``, else the Loaded's), ``tokenizer.json`` and ``tokenizer_config.json``.
    A classifier's ``id2label`` is ``labels``, else the Loaded's, else ``LABEL_i``.
    """
    from attnkit.tokenizers.hf import HFBackedTokenizer

    model, tokenizer, labels, _ = unpack(run, tokenizer, labels)
    cfg = model.cfg
    head = head or _default_head(cfg)
    if head not in HEADS:
        raise AttnkitError(f"unknown BERT head '{head}' (choose from {', '.join(HEADS)})")
    if head == "mlm" and not cfg.mlm_head:
        raise AttnkitError("the model has no masked-LM head to export (export head 'base')")
    if head == "classify" and not cfg.n_labels:
        raise AttnkitError("the model has no classifier to export (export head 'base')")
    if head == "classify" and cfg.pooling != "cls":
        raise AttnkitError("a mean-pooling classifier has no BertForSequenceClassification "
                           "equivalent (train with --model.pooling=cls, or export head 'base' "
                           "or 'mlm' without the classifier)")
    specials = {k: v for k, v in (getattr(tokenizer, "special_tokens", None) or {}).items()
                if v < cfg.vocab_size}
    config = encoder_config_out(cfg, head, labels or None, specials)
    tensors = hf_tensors(model, head)
    with atomic_dir(Path(path)) as tmp:
        write_json(tmp / "config.json", config)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if isinstance(tokenizer, HFBackedTokenizer):
            tokenizer = with_bert_framing(tokenizer)
            tokenizer.save(tmp / "tokenizer.json")
            write_json(tmp / "tokenizer_config.json", tokenizer_config(tokenizer, cfg))
    return HEADS[head]


def with_bert_framing(tokenizer):
    """``tokenizer`` with BERT's post-processor (``cls A sep``, pairs ``cls A sep B sep`` with
    segment 1) when it has ``cls``/``sep`` tokens but no post-processor - as a tokenizer attnkit
    trained for an encoder run - so Hugging Face's tokenizer frames texts as attnkit did."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    from attnkit.tokenizers.hf import HuggingFaceTokenizer

    specials = tokenizer.special_tokens
    if "cls" not in specials or "sep" not in specials or \
            tokenizer.hf_tokenizer.post_processor is not None:
        return tokenizer
    tok = Tokenizer.from_str(tokenizer.hf_tokenizer.to_str())
    cls, sep = (tok.id_to_token(specials[n]) for n in ("cls", "sep"))
    tok.post_processor = TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, specials["cls"]), (sep, specials["sep"])])
    return HuggingFaceTokenizer(tok)
