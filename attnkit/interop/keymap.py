"""Declarative key maps between attnkit tensor names and Hugging Face ones.

A key map is a list of :class:`Entry` rows: the attnkit name(s), the Hugging
Face name, and the named tensor transforms that turn the Hugging Face tensor
into attnkit's. ``{i}`` stands for the layer index. The same map serves both
directions: import applies each row's transforms in order, export applies
their inverses in reverse order. A row whose attnkit tensors the model does not
have (biases of a bias-free model, the output layer of a tied one) is skipped.

Transforms (:data:`TRANSFORMS`, each a ``(forward, inverse)`` pair):

- ``identity``: nothing to do.
- ``transpose``: GPT-2 stores its linear layers as ``Conv1D`` with weights of
  shape (in, out); ``nn.Linear`` wants (out, in).
- ``split_qkv``: GPT-2 fuses the query, key and value projections into one
  ``c_attn`` matrix, rows [q | k | v]; attnkit keeps three. Its inverse is
  ``merge_qkv``.
- ``flatten_patches``: ViT projects patches with a ``Conv2d(C, D, P, stride=P)``, weight
  (D, C, P, P); attnkit's patch embedding is the same function as an ``nn.Linear`` over
  patches flattened in (C, P, P) order, weight (D, C·P·P). Its inverse is
  ``unflatten_patches``.

No ``permute_rope`` is needed for Llama: attnkit's RoPE rotates the two halves
of each head ("rotate half"), the layout Hugging Face Llama checkpoints are
stored in, so q/k weights cross over unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class Shapes(NamedTuple):
    """The sizes a transform may need."""

    n_heads: int
    n_kv_heads: int
    head_size: int
    patch_size: int = 0  # a vision model's P (unflatten_patches); 0 for text models


Transform = Callable[[list[torch.Tensor], Shapes], list[torch.Tensor]]


def identity(ts: list[torch.Tensor], shapes: Shapes) -> list[torch.Tensor]:
    return ts


def transpose(ts: list[torch.Tensor], shapes: Shapes) -> list[torch.Tensor]:
    """(in, out) <-> (out, in), for GPT-2's Conv1D weights."""
    return [t.t().contiguous() for t in ts]


def split_qkv(ts: list[torch.Tensor], shapes: Shapes) -> list[torch.Tensor]:
    """One fused [q | k | v] tensor (rows first) -> three: (nh*hs, ...), (nkv*hs, ...) twice."""
    (fused,) = ts
    q, kv = shapes.n_heads * shapes.head_size, shapes.n_kv_heads * shapes.head_size
    if fused.shape[0] != q + 2 * kv:
        raise ValueError(f"fused qkv has {fused.shape[0]} rows, expected {q} + 2 x {kv}")
    return [t.contiguous() for t in fused.split([q, kv, kv], dim=0)]


def merge_qkv(ts: list[torch.Tensor], shapes: Shapes) -> list[torch.Tensor]:
    """Inverse of :func:`split_qkv`."""
    return [torch.cat(ts, dim=0)]


def flatten_patches(ts: list[torch.Tensor], shapes: Shapes) -> list[torch.Tensor]:
    """A patch convolution's weight (D, C, P, P) -> the Linear over flattened patches (D, C·P·P)."""
    (conv,) = ts
    if conv.dim() != 4:
        raise ValueError(f"a patch convolution's weight has 4 dimensions, not {conv.dim()}")
    return [conv.reshape(conv.shape[0], -1).contiguous()]


def unflatten_patches(ts: list[torch.Tensor], shapes: Shapes) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_patches`: (D, C·P·P) -> (D, C, P, P)."""
    (linear,) = ts
    P = shapes.patch_size
    return [linear.reshape(linear.shape[0], -1, P, P).contiguous()]  # (D, C, P, P)


#: name -> (import direction: HF -> attnkit, export direction: attnkit -> HF)
TRANSFORMS: dict[str, tuple[Transform, Transform]] = {
    "identity": (identity, identity),
    "transpose": (transpose, transpose),
    "split_qkv": (split_qkv, merge_qkv),
    "flatten_patches": (flatten_patches, unflatten_patches),
}


@dataclass(frozen=True)
class Entry:
    """attnkit name(s) <-> one Hugging Face name, through ``transforms`` (import order)."""

    ours: tuple[str, ...]
    theirs: str
    transforms: tuple[str, ...] = ()

    def expand(self, n_layers: int) -> Iterator[Entry]:
        """This row for each layer when it mentions ``{i}``, else itself."""
        if "{i}" not in self.theirs:
            yield self
            return
        for i in range(n_layers):
            yield Entry(tuple(o.format(i=i) for o in self.ours), self.theirs.format(i=i),
                        self.transforms)


def entry(ours: str | tuple[str, ...], theirs: str, *transforms: str) -> Entry:
    for name in transforms:
        if name not in TRANSFORMS:
            raise KeyError(f"unknown transform {name!r}")
    return Entry((ours,) if isinstance(ours, str) else tuple(ours), theirs, transforms)


@dataclass(frozen=True)
class KeyMap:
    """One family's rows, plus the Hugging Face names that carry no weights (``ignore``,
    suffixes such as GPT-2's old causal-mask buffers) and the prefix its base model
    adds (``transformer.``, ``model.``), which some checkpoints leave out."""

    entries: tuple[Entry, ...]
    prefix: str = ""
    ignore: tuple[str, ...] = field(default_factory=tuple)

    def rows(self, n_layers: int) -> list[Entry]:
        return [e for row in self.entries for e in row.expand(n_layers)]


class MissingTensor(KeyError):
    """The Hugging Face checkpoint lacks ``key``, which attnkit's ``ours`` needs."""

    def __init__(self, key: str, ours: str) -> None:
        super().__init__(key)
        self.key, self.ours = key, ours


def import_tensors(keymap: KeyMap, get: Callable[[str], torch.Tensor | None],
                   expected: set[str], n_layers: int, shapes: Shapes
                   ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """attnkit tensors for the names in ``expected``, read through ``get(hf_name)`` (None when
    absent), and for each the Hugging Face name it came from. Raises :class:`MissingTensor`
    for an absent Hugging Face tensor, ``ValueError`` when a transform cannot apply."""
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for row in keymap.rows(n_layers):
        if not all(o in expected for o in row.ours):
            continue
        t = get(row.theirs)
        if t is None:
            raise MissingTensor(row.theirs, row.ours[0])
        ts = [t]
        try:
            for name in row.transforms:
                ts = TRANSFORMS[name][0](ts, shapes)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"tensor '{row.theirs}' of shape {tuple(t.shape)}: {e}") from None
        out.update(zip(row.ours, ts, strict=True))
        sources.update(dict.fromkeys(row.ours, row.theirs))
    return out, sources


def export_tensors(keymap: KeyMap, ours: dict[str, torch.Tensor], n_layers: int,
                   shapes: Shapes) -> dict[str, torch.Tensor]:
    """Hugging Face tensors for attnkit's ``ours``; every attnkit tensor must be used once."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for row in keymap.rows(n_layers):
        if not all(o in ours for o in row.ours):
            continue
        ts = [ours[o] for o in row.ours]
        for name in reversed(row.transforms):
            ts = TRANSFORMS[name][1](ts, shapes)
        (out[row.theirs],) = ts
        used.update(row.ours)
    left = [k for k in ours if k not in used]
    if left:
        raise KeyError(f"no Hugging Face name for attnkit tensor {left[0]!r}")
    return out


def hf_names_used(keymap: KeyMap, expected: set[str], n_layers: int) -> set[str]:
    """The Hugging Face names an import of a model with tensors ``expected`` reads."""
    return {row.theirs for row in keymap.rows(n_layers) if all(o in expected for o in row.ours)}


# --- the maps ---------------------------------------------------------------------------

_QKV = ("blocks.{i}.attn.q_proj", "blocks.{i}.attn.k_proj", "blocks.{i}.attn.v_proj")

#: GPT-2 (``GPT2LMHeadModel``): Conv1D weights, fused qkv, LayerNorm with biases.
GPT2 = KeyMap(
    entries=(
        entry("tok_emb.weight", "transformer.wte.weight"),
        entry("pos_emb.weight", "transformer.wpe.weight"),
        entry(tuple(f"{p}.weight" for p in _QKV), "transformer.h.{i}.attn.c_attn.weight",
              "transpose", "split_qkv"),
        entry(tuple(f"{p}.bias" for p in _QKV), "transformer.h.{i}.attn.c_attn.bias", "split_qkv"),
        entry("blocks.{i}.attn.o_proj.weight", "transformer.h.{i}.attn.c_proj.weight", "transpose"),
        entry("blocks.{i}.attn.o_proj.bias", "transformer.h.{i}.attn.c_proj.bias"),
        entry("blocks.{i}.attn_norm.weight", "transformer.h.{i}.ln_1.weight"),
        entry("blocks.{i}.attn_norm.bias", "transformer.h.{i}.ln_1.bias"),
        entry("blocks.{i}.ffn_norm.weight", "transformer.h.{i}.ln_2.weight"),
        entry("blocks.{i}.ffn_norm.bias", "transformer.h.{i}.ln_2.bias"),
        entry("blocks.{i}.ffn.up_proj.weight", "transformer.h.{i}.mlp.c_fc.weight", "transpose"),
        entry("blocks.{i}.ffn.up_proj.bias", "transformer.h.{i}.mlp.c_fc.bias"),
        entry("blocks.{i}.ffn.down_proj.weight", "transformer.h.{i}.mlp.c_proj.weight",
              "transpose"),
        entry("blocks.{i}.ffn.down_proj.bias", "transformer.h.{i}.mlp.c_proj.bias"),
        entry("final_norm.weight", "transformer.ln_f.weight"),
        entry("final_norm.bias", "transformer.ln_f.bias"),
        entry("lm_head.weight", "lm_head.weight"),
    ),
    prefix="transformer.",
    ignore=(".attn.bias", ".attn.masked_bias"),  # causal-mask buffers of old checkpoints
)

#: Llama (``LlamaForCausalLM``): attnkit's names are Llama's, under other parents.
LLAMA = KeyMap(
    entries=(
        entry("tok_emb.weight", "model.embed_tokens.weight"),
        *(entry(f"blocks.{{i}}.attn.{p}.{w}", f"model.layers.{{i}}.self_attn.{p}.{w}")
          for p in ("q_proj", "k_proj", "v_proj", "o_proj") for w in ("weight", "bias")),
        *(entry(f"blocks.{{i}}.ffn.{p}.{w}", f"model.layers.{{i}}.mlp.{p}.{w}")
          for p in ("gate_proj", "up_proj", "down_proj") for w in ("weight", "bias")),
        entry("blocks.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
        entry("blocks.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
        entry("final_norm.weight", "model.norm.weight"),
        entry("lm_head.weight", "lm_head.weight"),
    ),
    prefix="model.",
    ignore=(".rotary_emb.inv_freq",),  # a buffer some older checkpoints saved
)
