"""The decoder family <-> Hugging Face GPT-2 and Llama: config mapping both ways.

Each supported ``model_type`` is an :class:`Architecture`: the Hugging Face
class names it accepts, its key map, and two functions that translate the
config - ``config.json`` to :class:`~attnkit.config.ModelConfig` and back.
Anything the attnkit decoder cannot compute exactly is refused with one line
naming the file and the key, never approximated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.config import ModelConfig
from attnkit.errors import AttnkitError
from attnkit.interop.keymap import GPT2, LLAMA, KeyMap
from attnkit.nn.ffn import ffn_hidden_size


@dataclass(frozen=True)
class Architecture:
    model_type: str
    classes: tuple[str, ...]  # accepted ``architectures``; the first is written on export
    keymap: KeyMap
    config_in: Callable[[ConfigReader], ModelConfig]
    config_out: Callable[[ModelConfig, dict[str, int]], dict[str, Any]]


class ConfigReader:
    """Typed access to a Hugging Face ``config.json``; errors name the file and the key."""

    _MISSING = object()

    def __init__(self, data: dict[str, Any], path: Path) -> None:
        self.data, self.path = data, path

    def error(self, key: str, why: str) -> AttnkitError:
        return AttnkitError(f"{self.path}: {key}={self.data.get(key)!r} {why}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        value = self.data.get(key, default)
        if value is self._MISSING:
            raise AttnkitError(f"{self.path} has no '{key}' (the config.json is incomplete; "
                               f"re-save it with save_pretrained)")
        if value is None and default is None:
            return None
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.error(key, f"must be {names} (fix config.json)")
        return value

    def require(self, key: str, default: Any, allowed: tuple[Any, ...], why: str) -> Any:
        value = self.data.get(key, default)
        if value not in allowed:
            raise self.error(key, f"is not supported ({why})")
        return value


def build_config(reader: ConfigReader, **fields: Any) -> ModelConfig:
    """A ModelConfig from mapped fields; its own validation errors gain the file's name."""
    try:
        return ModelConfig(**fields)
    except AttnkitError as e:
        raise AttnkitError(f"{reader.path}: {e}") from None


# --- GPT-2 ------------------------------------------------------------------------------

# HF GPT-2 activation_function <-> attnkit ffn. "gelu_new" is the tanh approximation.
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                    "relu": "relu"}
GPT2_ACTIVATIONS_OUT = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


def gpt2_config_in(r: ConfigReader) -> ModelConfig:
    act = r.require("activation_function", "gelu_new", tuple(GPT2_ACTIVATIONS),
                    f"attnkit knows {', '.join(GPT2_ACTIVATIONS)}")
    r.require("scale_attn_weights", True, (True,), "attnkit always scales scores by 1/sqrt(hs)")
    r.require("scale_attn_by_inverse_layer_idx", False, (False,),
              "attnkit does not scale attention by layer")
    r.require("add_cross_attention", False, (False,), "a decoder-only model has no cross-attention")
    n_embd = r.get("n_embd", int, 768)
    return build_config(
        r,
        vocab_size=r.get("vocab_size", int, 50257),
        context_length=r.get("n_positions", int, r.data.get("n_ctx", 1024)),
        d_model=n_embd,
        n_layers=r.get("n_layer", int, 12),
        n_heads=r.get("n_head", int, 12),
        ffn_hidden=r.get("n_inner", int, None),
        norm="layernorm", norm_position="pre", norm_eps=r.get("layer_norm_epsilon", float, 1e-5),
        ffn=GPT2_ACTIVATIONS[act], pos="learned", dropout=0.0, bias=True,
        tie_embeddings=r.get("tie_word_embeddings", bool, True),
    )


def gpt2_config_out(cfg: ModelConfig, specials: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": cfg.ffn_hidden,
        "activation_function": GPT2_ACTIVATIONS_OUT[cfg.ffn],
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "scale_attn_weights": True, "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": specials.get("bos"), "eos_token_id": specials.get("eos"),
        "pad_token_id": specials.get("pad"),
    }


# --- Llama ------------------------------------------------------------------------------

LLAMA_ACTIVATIONS = {"silu": "swiglu", "gelu": "geglu"}
LLAMA_ACTIVATIONS_OUT = {v: k for k, v in LLAMA_ACTIVATIONS.items()}


def _rope_theta(r: ConfigReader) -> float:
    """RoPE's base from ``rope_parameters`` (transformers 5) or ``rope_theta`` (4.x); any
    scaling is refused: attnkit's RoPE is the plain one."""
    theta = r.get("rope_theta", float, 10000.0)
    for key in ("rope_scaling", "rope_parameters"):
        params = r.data.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise r.error(key, "must be a mapping (fix config.json)")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise r.error(key, "is not supported (attnkit's RoPE has no scaling; only "
                               "rope_type 'default' converts)")
        if "rope_theta" in params:
            theta = ConfigReader(params, r.path).get("rope_theta", float)
    return theta


def llama_config_in(r: ConfigReader) -> ModelConfig:
    act = r.require("hidden_act", "silu", tuple(LLAMA_ACTIVATIONS),
                    "attnkit's gated FFNs are silu (swiglu) and gelu (geglu)")
    hidden = r.get("hidden_size", int, 4096)
    heads = r.get("num_attention_heads", int, 32)
    head_dim = r.get("head_dim", int, None)
    if head_dim is not None and head_dim * heads != hidden:
        raise r.error("head_dim", f"is not supported (attnkit needs head_dim = hidden_size / "
                                  f"num_attention_heads = {hidden / heads:g})")
    attn_bias = r.get("attention_bias", bool, False)
    if r.get("mlp_bias", bool, False) != attn_bias:
        raise r.error("mlp_bias", "is not supported unless it equals attention_bias (attnkit "
                                  "has one bias switch)")
    return build_config(
        r,
        vocab_size=r.get("vocab_size", int, 32000),
        context_length=r.get("max_position_embeddings", int, 2048),
        d_model=hidden,
        n_layers=r.get("num_hidden_layers", int, 32),
        n_heads=heads,
        n_kv_heads=r.get("num_key_value_heads", int, None) or heads,
        ffn_hidden=r.get("intermediate_size", int, 11008),
        norm="rmsnorm", norm_position="pre", norm_eps=r.get("rms_norm_eps", float, 1e-6),
        ffn=LLAMA_ACTIVATIONS[act], pos="rope", rope_theta=_rope_theta(r), dropout=0.0,
        bias=attn_bias, tie_embeddings=r.get("tie_word_embeddings", bool, False),
    )


def llama_config_out(cfg: ModelConfig, specials: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden or ffn_hidden_size(cfg.d_model, cfg.ffn),
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_size,
        "hidden_act": LLAMA_ACTIVATIONS_OUT[cfg.ffn],
        "max_position_embeddings": cfg.context_length, "rms_norm_eps": cfg.norm_eps,
        # transformers 4.x reads rope_theta, 5.x rope_parameters; both say the same.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
        "initializer_range": cfg.init_std,
        "bos_token_id": specials.get("bos"), "eos_token_id": specials.get("eos"),
        "pad_token_id": specials.get("pad"),
    }


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("gpt2", ("GPT2LMHeadModel", "GPT2Model"), GPT2,
                         gpt2_config_in, gpt2_config_out),
    "llama": Architecture("llama", ("LlamaForCausalLM", "LlamaModel"), LLAMA,
                          llama_config_in, llama_config_out),
}


def export_architecture(cfg: ModelConfig) -> Architecture:
    """The Hugging Face architecture that computes exactly what ``cfg`` does, or a one-line
    refusal naming the first knob no supported architecture has."""
    family = getattr(cfg, "family", "decoder")
    if family != "decoder":
        raise AttnkitError(f"cannot export a {family} model to Hugging Face yet (supported: "
                           f"decoder models as GPT-2 or Llama)")
    target = {"learned": "gpt2", "rope": "llama"}.get(cfg.pos)
    if target is None:
        raise AttnkitError(f"cannot export model.pos={cfg.pos} to Hugging Face (GPT-2 uses learned "
                           f"positions, Llama rope; no supported architecture has {cfg.pos})")
    if target == "gpt2":
        needs = [("norm", "layernorm"), ("norm_position", "pre"), ("bias", True),
                 ("ffn", tuple(GPT2_ACTIVATIONS_OUT)), ("n_kv_heads", cfg.n_heads)]
    else:
        needs = [("norm", "rmsnorm"), ("norm_position", "pre"),
                 ("ffn", tuple(LLAMA_ACTIVATIONS_OUT))]
    for key, want in needs:
        value = getattr(cfg, key)
        if value != want and not (isinstance(want, tuple) and value in want):
            shown = " or ".join(map(str, want)) if isinstance(want, tuple) else want
            raise AttnkitError(f"cannot export model.{key}={value} as Hugging Face {target}: it "
                               f"needs model.{key}={shown} (pos={cfg.pos} picks {target})")
    return ARCHITECTURES[target]
