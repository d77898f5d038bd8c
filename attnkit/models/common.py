"""Construction shared by the Transformer families: each knob's table lookup lives here once.

Every helper takes the family's config (any :class:`~attnkit.config.TransformerConfig`), so
the decoder, the encoder and the encoder-decoder build their parts the same way.
"""

from __future__ import annotations

import math

from torch import nn

from attnkit.nn import NORMS, Attention, Block, build_ffn, ffn_hidden_size
from attnkit.nn.positional import LearnedPositional, RotaryEmbedding, SinusoidalPositional

ADDITIVE_POSITIONS = {"learned": LearnedPositional, "sinusoidal": SinusoidalPositional}


def make_norm(cfg) -> nn.Module:
    return NORMS[cfg.norm](cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def make_additive_positions(cfg) -> nn.Module | None:
    """The position table added to the embeddings, or None for rope / alibi / none."""
    cls = ADDITIVE_POSITIONS.get(cfg.pos)
    return cls(cfg.context_length, cfg.d_model) if cls else None


def make_rope(cfg) -> RotaryEmbedding | None:
    """RoPE has no parameters, so one table serves every layer of a model."""
    return (RotaryEmbedding(cfg.head_size, cfg.context_length, cfg.rope_theta)
            if cfg.pos == "rope" else None)


def make_self_attention(cfg, causal: bool, rope: RotaryEmbedding | None) -> Attention:
    return Attention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, bias=cfg.bias, dropout=cfg.dropout,
                     causal=causal, rope=rope, alibi=cfg.pos == "alibi", backend=cfg.attention)


def make_ffn(cfg) -> nn.Module:
    hidden = cfg.ffn_hidden or ffn_hidden_size(cfg.d_model, cfg.ffn)
    return build_ffn(cfg.ffn, cfg.d_model, hidden, cfg.bias)


def make_blocks(cfg, n_layers: int, *, causal: bool, rope: RotaryEmbedding | None) -> nn.ModuleList:
    """``n_layers`` self-attention + FFN blocks with the config's norm placement."""
    return nn.ModuleList(
        Block(attn=make_self_attention(cfg, causal, rope), ffn=make_ffn(cfg),
              attn_norm=make_norm(cfg), ffn_norm=make_norm(cfg),
              norm_position=cfg.norm_position, dropout=cfg.dropout)
        for _ in range(n_layers))


def make_final_norm(cfg) -> nn.Module:
    """Post-LN already ends every block with a norm; pre-LN needs one after the stack."""
    return make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()


def init_weights(module: nn.Module, std: float) -> None:
    """GPT-2 / BERT initialisation, for ``model.apply``: N(0, std) matrices and tables, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, LearnedPositional):
        nn.init.normal_(module.weight, mean=0.0, std=std)


def scale_residual_projections(stack: nn.Module, std: float, depth: int) -> None:
    """GPT-2: scale the residual output projections by 1/sqrt(2 * depth) so the variance of the
    residual stream does not grow with depth."""
    for name, p in stack.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            nn.init.normal_(p, mean=0.0, std=std / math.sqrt(2 * depth))


def describe(model: nn.Module, layers: str) -> str:
    """The one line the trainer prints for a Transformer: size, family and the knobs that
    matter; ``layers`` says how many (``"6 layers"``, ``"2+2 layers"``)."""
    cfg = model.cfg
    kv = f" ({cfg.n_kv_heads} kv)" if cfg.n_kv_heads != cfg.n_heads else ""
    return (f"{model.num_params() / 1e6:.2f}M parameters | {cfg.family}, {layers}, d_model "
            f"{cfg.d_model}, {cfg.n_heads} heads{kv}, context {cfg.context_length} | pos "
            f"{cfg.pos}, {cfg.norm_position}-{cfg.norm}, ffn {cfg.ffn}")
