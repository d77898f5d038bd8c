"""Leaf building blocks. Each takes explicit arguments and can be tested alone."""

from attnkit.nn.attention import Attention
from attnkit.nn.block import Block
from attnkit.nn.ffn import ACTIVATIONS, FFNS, GLU, MLP, build_ffn, ffn_hidden_size
from attnkit.nn.head import OutputHead
from attnkit.nn.kv_cache import KVCache
from attnkit.nn.norms import NORMS, LayerNorm, RMSNorm
from attnkit.nn.positional import (
    POSITIONS,
    LearnedPositional,
    RotaryEmbedding,
    SinusoidalPositional,
    alibi_slopes,
)

__all__ = [
    "ACTIVATIONS", "Attention", "Block", "FFNS", "GLU", "MLP", "build_ffn", "ffn_hidden_size", "KVCache",
    "OutputHead",
    "NORMS", "LayerNorm", "RMSNorm", "POSITIONS", "LearnedPositional", "RotaryEmbedding",
    "SinusoidalPositional", "alibi_slopes",
]
