"""The seq2seq family <-> Hugging Face BART: the key map and the config mapping, both ways.

BART (``BartForConditionalGeneration``, model_type ``bart``) is attnkit's
:class:`~attnkit.models.Seq2Seq` with ``pos=learned``, ``embedding_norm=True``, post-LN,
biases everywhere and one embedding matrix shared by the source, the target and the output
layer (``share_embeddings=True``). Every row of :data:`BART` is a plain copy, with two
exceptions handled here rather than in the key map:

- the learned position tables carry an OFFSET of 2 (``BartLearnedPositionalEmbedding`` has
  ``max_position_embeddings + 2`` rows and position p reads row p + 2): import drops rows 0
  and 1, export prepends two rows of zeros (rows BART never reads);
- ``final_logits_bias``: attnkit's output layer has no bias, so import accepts only an
  all-zero one and export writes zeros.

Hugging Face's ``"gelu"`` is the exact erf GELU (attnkit's ``gelu``), ``"gelu_new"`` the tanh
form (``gelu_tanh``). BART's LayerNorms have PyTorch's default eps, 1e-5.

The special ids come from the checkpoint's ``config.json`` (and ``generation_config.json``,
which ``generate`` reads first), never from a tokenizer: the ``token_ids`` of the
:class:`~attnkit.interop.loaded.Loaded` hold pad, bos, eos, decoder_start, forced_bos and
forced_eos, a converted run keeps them in ``token_ids.json`` (:data:`TOKEN_IDS_FILE`), and
export writes them back.

::

    run = from_hf_bart("bart-folder/")   # a Loaded: run.model (a Seq2Seq), run.token_ids
    to_hf_bart(run, "exported/")         # config.json, model.safetensors (+ tokenizer)

Like the rest of :mod:`attnkit.interop`, only JSON and safetensors are read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from attnkit.config import DataConfig, RunConfig, Seq2SeqConfig
from attnkit.devices import resolve_device
from attnkit.errors import AttnkitError
from attnkit.interop.decoder import ConfigReader
from attnkit.interop.io import HFWeights, atomic_dir, folder_tokenizer, read_hf_config, tokenizer_config
from attnkit.interop.keymap import KeyMap, MissingTensor, Shapes, entry, export_tensors, import_tensors
from attnkit.interop.loaded import Loaded, unpack
from attnkit.models.seq2seq import Seq2Seq
from attnkit.nn.ffn import ffn_hidden_size
from attnkit.runs import write_json
from attnkit.weights import model_state

#: Rows of BART's position tables before position 0.
POSITION_OFFSET = 2
#: BART's LayerNorms use PyTorch's default eps; the config has no key for it.
NORM_EPS = 1e-5
CLASSES = ("BartForConditionalGeneration", "BartModel")
#: activation_function -> ffn, and back.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu"}
ACTIVATIONS_OUT = {v: k for k, v in ACTIVATIONS.items()}
#: attnkit's special-token names -> BART's config keys.
TOKEN_KEYS = {"pad": "pad_token_id", "bos": "bos_token_id", "eos": "eos_token_id"}
#: The ids generation uses beside them: the first decoder input, and the tokens ``generate``
#: forces first and at the length limit.
GENERATION_KEYS = {"decoder_start": "decoder_start_token_id", "forced_bos": "forced_bos_token_id",
                   "forced_eos": "forced_eos_token_id"}
ID_KEYS = {**TOKEN_KEYS, **GENERATION_KEYS}
#: Where a converted run keeps its token ids (JSON: name -> id or null).
TOKEN_IDS_FILE = "token_ids.json"


def _linear(ours: str, theirs: str) -> tuple:
    """A Linear or LayerNorm: its weight and its bias."""
    return entry(f"{ours}.weight", f"{theirs}.weight"), entry(f"{ours}.bias", f"{theirs}.bias")


def _attention(ours: str, theirs: str) -> tuple:
    return tuple(row for p, q in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"),
                                  ("o_proj", "out_proj"))
                 for row in _linear(f"{ours}.{p}", f"{theirs}.{q}"))


_ENC, _DEC = "model.encoder.layers.{i}", "model.decoder.layers.{i}"
#: The position tables, whose rows are offset (see the module docstring).
POSITIONS = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")

#: BART in every direction: (attnkit name, Hugging Face name), no transforms. ``{i}`` is the
#: layer of the encoder or of the decoder; both stacks share one count in the key map's
#: expansion, so the two stacks have two maps (:func:`keymap`).
_SHARED = (
    entry("src_emb.weight", "model.shared.weight"),
    entry("src_pos.weight", POSITIONS[0]),
    entry("tgt_pos.weight", POSITIONS[1]),
    *_linear("src_emb_norm", "model.encoder.layernorm_embedding"),
    *_linear("tgt_emb_norm", "model.decoder.layernorm_embedding"),
)
_ENCODER = (
    *_attention("encoder.{i}.attn", f"{_ENC}.self_attn"),
    *_linear("encoder.{i}.attn_norm", f"{_ENC}.self_attn_layer_norm"),
    *_linear("encoder.{i}.ffn.up_proj", f"{_ENC}.fc1"),
    *_linear("encoder.{i}.ffn.down_proj", f"{_ENC}.fc2"),
    *_linear("encoder.{i}.ffn_norm", f"{_ENC}.final_layer_norm"),
)
_DECODER = (
    *_attention("decoder.{i}.attn", f"{_DEC}.self_attn"),
    *_linear("decoder.{i}.attn_norm", f"{_DEC}.self_attn_layer_norm"),
    *_attention("decoder.{i}.cross_attn", f"{_DEC}.encoder_attn"),
    *_linear("decoder.{i}.cross_norm", f"{_DEC}.encoder_attn_layer_norm"),
    *_linear("decoder.{i}.ffn.up_proj", f"{_DEC}.fc1"),
    *_linear("decoder.{i}.ffn.down_proj", f"{_DEC}.fc2"),
    *_linear("decoder.{i}.ffn_norm", f"{_DEC}.final_layer_norm"),
)
#: Tensors a BART checkpoint may hold that duplicate ``model.shared.weight`` (older
#: transformers saved the tied copies); each must equal it.
TIED_COPIES = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
               "lm_head.weight")
PREFIX = "model."


def keymaps(n_encoder_layers: int, n_decoder_layers: int) -> list[tuple[KeyMap, int]]:
    """The key maps of a model with these depths, each with the layer count it expands to."""
    return [(KeyMap(_SHARED, PREFIX), 1), (KeyMap(_ENCODER, PREFIX), n_encoder_layers),
            (KeyMap(_DECODER, PREFIX), n_decoder_layers)]


def hf_names(n_encoder_layers: int, n_decoder_layers: int) -> list[str]:
    """Every Hugging Face name the key maps read, in order."""
    return [row.theirs for km, n in keymaps(n_encoder_layers, n_decoder_layers) for row in km.rows(n)]


# --- configs -------------------------------------------------------------------------------------
def seq2seq_config_in(r: ConfigReader) -> Seq2SeqConfig:
    """The :class:`Seq2SeqConfig` computing what the BART ``config.json`` in ``r`` describes."""
    if r.data.get("model_type") != "bart":
        raise r.error("model_type", "is not BART (this importer reads BART encoder-decoders)")
    classes = r.data.get("architectures") or [CLASSES[0]]
    classes = classes if isinstance(classes, list) else [classes]
    bad = [c for c in classes if c not in CLASSES]
    if bad:
        raise AttnkitError(f"{r.path}: architectures '{bad[0]}' is not supported (attnkit converts "
                           f"{', '.join(CLASSES)})")
    act = r.require("activation_function", "gelu", tuple(ACTIVATIONS),
                    f"attnkit knows {', '.join(ACTIVATIONS)}")
    r.require("normalize_before", False, (False,), "attnkit's BART is post-LN, as Hugging Face's is")
    r.require("add_final_layer_norm", False, (False,), "BART has no norm after each stack")
    r.require("tie_word_embeddings", True, (True,), "attnkit's Seq2Seq shares one matrix between "
              "source, target and output layer (share_embeddings)")
    heads = r.get("encoder_attention_heads", int, 16)
    if r.get("decoder_attention_heads", int, 16) != heads:
        raise r.error("decoder_attention_heads", f"is not supported unless it equals "
                                                 f"encoder_attention_heads={heads} (attnkit has one "
                                                 f"n_heads for both stacks)")
    ffn_dim = r.get("encoder_ffn_dim", int, 4096)
    if r.get("decoder_ffn_dim", int, 4096) != ffn_dim:
        raise r.error("decoder_ffn_dim", f"is not supported unless it equals encoder_ffn_dim="
                                         f"{ffn_dim} (attnkit has one ffn_hidden for both stacks)")
    fields = dict(
        vocab_size=r.get("vocab_size", int, 50265), d_model=r.get("d_model", int, 1024),
        n_encoder_layers=r.get("encoder_layers", int, 12),
        n_decoder_layers=r.get("decoder_layers", int, 12),
        n_heads=heads, ffn_hidden=ffn_dim, ffn=ACTIVATIONS[act],
        context_length=r.get("max_position_embeddings", int, 1024),
        scale_embeddings=r.get("scale_embedding", bool, False),
        dropout=r.get("dropout", float, 0.1), init_std=r.get("init_std", float, 0.02),
        pos="learned", norm="layernorm", norm_position="post", norm_eps=NORM_EPS, bias=True,
        embedding_norm=True, share_embeddings=True,
    )
    try:
        return Seq2SeqConfig(**fields)
    except AttnkitError as e:
        raise AttnkitError(f"{r.path}: {e}") from None


def token_ids_in(data: dict[str, Any], generation: dict[str, Any] | None = None,
                 where: Path | str = "config.json") -> dict[str, int | None]:
    """The ids :data:`ID_KEYS` names (None where unset), from a BART ``config.json`` (``data``)
    and its ``generation_config.json`` (``generation``), whose values win as in ``generate``."""
    vocab = data.get("vocab_size", 50265)
    out: dict[str, int | None] = {}
    for name, key in ID_KEYS.items():
        source = generation if generation and generation.get(key) is not None else data
        value = source.get(key)
        if value is not None and not (type(value) is int and 0 <= value < vocab):
            file = Path(where).with_name("generation_config.json") if source is generation else where
            raise AttnkitError(f"{file}: {key}={value!r} is not a token id (attnkit needs an "
                               f"integer from 0 to vocab_size - 1, or null)")
        out[name] = value
    return out


def save_token_ids(run_dir: Path, ids: dict[str, int | None]) -> None:
    """Write ``ids`` to the run's :data:`TOKEN_IDS_FILE`."""
    write_json(Path(run_dir) / TOKEN_IDS_FILE, {name: ids.get(name) for name in ID_KEYS})


def read_token_ids(run_dir: str | Path) -> dict[str, int | None] | None:
    """A converted BART run's token ids (:func:`save_token_ids`), or None for a run without
    :data:`TOKEN_IDS_FILE` (attnkit's own runs: their ids are the tokenizer's)."""
    path = Path(run_dir) / TOKEN_IDS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        data = None
    ok = isinstance(data, dict) and set(data) <= set(ID_KEYS) and all(
        v is None or (type(v) is int and v >= 0) for v in data.values())
    if not ok:
        raise AttnkitError(f"{path} is not a map of token names to ids (the run directory is "
                           f"damaged; convert the Hugging Face folder again)")
    return {name: data.get(name) for name in ID_KEYS}


def check_exportable(cfg: Seq2SeqConfig) -> None:
    """A one-line refusal naming the first knob BART cannot express."""
    needs = [("pos", "learned"), ("norm", "layernorm"), ("norm_position", "post"), ("bias", True),
             ("embedding_norm", True), ("share_embeddings", True), ("n_kv_heads", cfg.n_heads),
             ("ffn", tuple(ACTIVATIONS_OUT)), ("norm_eps", NORM_EPS)]
    for key, want in needs:
        value = getattr(cfg, key)
        if value != want and not (isinstance(want, tuple) and value in want):
            shown = " or ".join(want) if isinstance(want, tuple) else want
            raise AttnkitError(f"cannot export model.{key}={value} as Hugging Face BART: it needs "
                               f"model.{key}={shown}")


def seq2seq_config_out(cfg: Seq2SeqConfig, token_ids: dict[str, int | None] | None = None
                       ) -> dict[str, Any]:
    """A Hugging Face BART ``config.json`` (as a dict) for ``cfg``. ``token_ids``: the names of
    :data:`ID_KEYS`; an unknown ``decoder_start`` is ``bos``, where attnkit starts decoding."""
    check_exportable(cfg)
    ids = dict(token_ids or {})
    if ids.get("decoder_start") is None:
        ids["decoder_start"] = ids.get("bos")
    hidden = cfg.ffn_hidden or ffn_hidden_size(cfg.d_model, cfg.ffn)
    return {
        "architectures": [CLASSES[0]], "model_type": "bart", "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
        "encoder_layers": cfg.n_encoder_layers, "decoder_layers": cfg.n_decoder_layers,
        "encoder_attention_heads": cfg.n_heads, "decoder_attention_heads": cfg.n_heads,
        "encoder_ffn_dim": hidden, "decoder_ffn_dim": hidden,
        "activation_function": ACTIVATIONS_OUT[cfg.ffn],
        "max_position_embeddings": cfg.context_length, "scale_embedding": cfg.scale_embeddings,
        "dropout": cfg.dropout, "attention_dropout": cfg.dropout, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "init_std": cfg.init_std,
        "tie_word_embeddings": True,
        **{key: ids.get(name) for name, key in ID_KEYS.items()},
        "decoder_start_token_id": ids["decoder_start"],
    }


# --- import --------------------------------------------------------------------------------------
def from_hf_bart(path: str | Path, device: str = "cpu") -> Loaded:
    """Import a Hugging Face BART folder as a :class:`~attnkit.models.Seq2Seq` in eval mode.

    The :class:`Loaded` holds, as :func:`attnkit.load` gives them: the folder's
    ``tokenizer.json`` (None without one), the run config, and ``token_ids``, the folder's
    pad/bos/eos/decoder_start ids (decode from ``decoder_start``).
    """
    folder = Path(path)
    data = read_hf_config(folder)
    cfg = seq2seq_config_in(ConfigReader(data, folder / "config.json"))
    model = Seq2Seq(cfg)
    expected = model_state(model)  # tied tensors once
    shapes = Shapes(cfg.n_heads, cfg.n_kv_heads, cfg.head_size)
    tensors: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    with HFWeights(folder, PREFIX) as weights:
        def get(name: str) -> torch.Tensor | None:
            t = weights.get(name)
            if name in POSITIONS and t is not None:
                if t.ndim != 2 or t.shape[0] <= POSITION_OFFSET:
                    raise AttnkitError(f"{weights.file_of(name)}: tensor '{name}' has shape "
                                       f"{tuple(t.shape)}, but BART's position table needs "
                                       f"max_position_embeddings + {POSITION_OFFSET} rows")
                t = t[POSITION_OFFSET:]
            return t

        for km, n in keymaps(cfg.n_encoder_layers, cfg.n_decoder_layers):
            try:
                got, src = import_tensors(km, get, set(expected), n, shapes)
            except MissingTensor as e:
                raise AttnkitError(f"{weights.file_of(e.key)} has no tensor '{e.key}' (attnkit's "
                                   f"'{e.ours}' needs it; the weights do not match config.json)"
                                   ) from None
            tensors.update(got)
            sources.update(src)
        used = set(sources.values())
        for key in weights.keys():
            if key in used or PREFIX + key in used:
                continue
            top_level = key.startswith(PREFIX) or key in ("lm_head.weight", "final_logits_bias")
            full = key if top_level else PREFIX + key  # a BartModel's keys have no prefix
            if full == "final_logits_bias":
                bias = weights.get(key)
                if bool(bias.any()):
                    raise AttnkitError(f"{weights.file_of(key)}: tensor 'final_logits_bias' is not "
                                       f"all zeros (attnkit's Seq2Seq has no output bias; a model "
                                       f"with a trained one does not convert)")
                continue
            if full in TIED_COPIES:
                if not torch.equal(weights.get(key), tensors["src_emb.weight"]):
                    raise AttnkitError(f"{weights.file_of(key)}: tensor '{key}' differs from "
                                       f"'model.shared.weight' (untied embeddings; attnkit's "
                                       f"Seq2Seq shares one matrix)")
                continue
            raise AttnkitError(f"{weights.file_of(key)}: unexpected tensor '{key}' (not part of a "
                               f"{CLASSES[0]} with this config.json; attnkit does not convert it)")
        weights.check_shapes(tensors, expected, sources, lambda src: (
            f" (after dropping BART's first {POSITION_OFFSET} rows)" if src in POSITIONS else ""))
    missing = [k for k in expected if k not in tensors]
    if missing:  # the maps cover every tensor of a BART-shaped Seq2Seq; this guards them
        raise AttnkitError(f"no BART tensor maps to attnkit's '{missing[0]}' (report this as an "
                           f"attnkit bug)")
    model.load_state_dict({k: t.float() for k, t in tensors.items()}, strict=False)
    model.to(resolve_device(device)).eval()
    token_ids = token_ids_in(data, _generation_config(folder), folder / "config.json")
    return Loaded(model, folder_tokenizer(folder),
                  RunConfig(model=cfg, data=DataConfig(tokenizer=str(folder.resolve()))),
                  token_ids=token_ids, source=folder)


def _generation_config(folder: Path) -> dict[str, Any] | None:
    """The folder's ``generation_config.json`` as a dict, or None where there is none."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise AttnkitError(f"{path} is not a JSON object (re-save the model with save_pretrained, "
                           f"or delete the file to use the ids of config.json)")
    return data


# --- export --------------------------------------------------------------------------------------
def hf_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The Hugging Face tensors of ``model`` (a BART-shaped Seq2Seq), as ``save_pretrained``
    of ``BartForConditionalGeneration`` writes them."""
    cfg = model.cfg
    check_exportable(cfg)
    state = model_state(model)
    shapes = Shapes(cfg.n_heads, cfg.n_kv_heads, cfg.head_size)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for km, n in keymaps(cfg.n_encoder_layers, cfg.n_decoder_layers):
        part = {o: state[o] for row in km.rows(n) for o in row.ours if o in state}
        out.update(export_tensors(km, part, n, shapes))
        used.update(part)
    left = [k for k in state if k not in used]
    if left:
        raise AttnkitError(f"cannot export to BART: no Hugging Face name for attnkit tensor "
                           f"'{left[0]}' (the model has parameters the architecture lacks)")
    for name in POSITIONS:  # BART's two unused leading rows
        t = out[name]
        out[name] = torch.cat([t.new_zeros(POSITION_OFFSET, t.shape[1]), t])
    out["final_logits_bias"] = torch.zeros(1, cfg.vocab_size)
    return {k: t.detach().contiguous().cpu() for k, t in out.items()}


def to_hf_bart(run: Loaded | nn.Module, path: str | Path, tokenizer=None,
               token_ids: dict[str, int | None] | None = None) -> str:
    """Write ``run`` (a :class:`Loaded` of a :class:`~attnkit.models.Seq2Seq` with
    ``pos=learned``, ``embedding_norm=True``, post-LN, biases and ``share_embeddings``, or the
    bare model) as a Hugging Face BART folder that
    ``BartForConditionalGeneration.from_pretrained`` loads; returns the class.

    The token ids in ``config.json`` come from ``token_ids``, else the Loaded's (those
    :func:`from_hf_bart` read), else from the tokenizer's specials (decoder start = bos). The
    folder (which must not exist or be empty) gets ``config.json``, ``model.safetensors`` and,
    for a Hugging Face tokenizer, ``tokenizer.json`` and ``tokenizer_config.json``.
    """
    from attnkit.tokenizers.hf import HFBackedTokenizer

    model, tokenizer, _, ids = unpack(run, tokenizer, token_ids=token_ids)
    cfg = model.cfg
    if getattr(cfg, "family", None) != "seq2seq":
        raise AttnkitError(f"cannot export a {getattr(cfg, 'family', 'decoder')} model as BART "
                           f"(BART is an encoder-decoder)")
    if ids is None:
        ids = {k: v for k, v in (getattr(tokenizer, "special_tokens", None) or {}).items()
               if k in TOKEN_KEYS and v < cfg.vocab_size}
    config = seq2seq_config_out(cfg, ids)
    tensors = hf_tensors(model)
    with atomic_dir(Path(path)) as tmp:
        write_json(tmp / "config.json", config)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if isinstance(tokenizer, HFBackedTokenizer):
            tokenizer.save(tmp / "tokenizer.json")
            write_json(tmp / "tokenizer_config.json", tokenizer_config(tokenizer, cfg))
    return CLASSES[0]
