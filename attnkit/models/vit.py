"""A vision Transformer (Dosovitskiy et al., 2020): an image as a sequence of patch tokens,
read by the same :class:`~attnkit.nn.Block` stack as the text encoder (``causal=False``).

    pixels (B, C, H, W)
      -> patches, each projected to D           (B, N, D)   N = (H / P) * (W / P)
      -> [class token] + patches + positions     (B, N + 1, D) with pool "cls"
      -> the blocks, every knob of the encoder   (B, N + 1, D)
      -> final norm, pool (class token | mean)   (B, D)
      -> classifier                              (B, L)

Contract shared by every family: ``logits, loss = model(pixel_values, labels=None)``;
``logits`` (B, L) are the class logits, ``loss`` their cross-entropy against ``labels`` (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.config import VisionConfig
from attnkit.models.common import init_weights, make_blocks, make_final_norm
from attnkit.models.contract import Abilities
from attnkit.nn.patch import PatchEmbedding, sinusoid_table_2d


class ViT(nn.Module):
    abilities = Abilities(classifies=True, attention_maps=True, images=True)

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        if cfg.n_labels < 2 or cfg.channels < 1:
            raise ValueError("VisionConfig.n_labels and channels must be set before building a model")
        self.cfg = cfg
        self.patch_emb = PatchEmbedding(cfg.channels, cfg.patch_size, cfg.d_model, cfg.bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.pool == "cls" else None
        n = cfg.context_length  # patches, plus the class token
        self.pos_emb = nn.Parameter(torch.zeros(1, n, cfg.d_model)) if cfg.pos == "learned" else None
        if cfg.pos == "sinusoidal":  # fixed; the class token's position is zeros
            table = sinusoid_table_2d(cfg.grid, cfg.d_model)
            table = torch.cat([torch.zeros(n - cfg.n_patches, cfg.d_model), table])
            self.register_buffer("pos_table", table[None], persistent=False)
        else:
            self.pos_table = None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = make_blocks(cfg, cfg.n_layers, causal=False, rope=None)
        self.final_norm = make_final_norm(cfg)  # pre-LN (ViT's): one norm after the stack
        self.classifier = nn.Linear(cfg.d_model, cfg.n_labels)
        self.apply(lambda m: init_weights(m, cfg.init_std))
        for p in (self.cls_token, self.pos_emb):
            if p is not None:
                nn.init.trunc_normal_(p, std=cfg.init_std)

    def hidden_states(self, pixel_values: torch.Tensor, *, need_weights: bool = False
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last hidden states (B, T, D), T = patches (+ 1 class token, first), and with
        ``need_weights`` the attention weights of every layer, (B, nh, T, T) each."""
        x = self.patch_emb(pixel_values.to(self.patch_emb.proj.weight.dtype))  # (B, N, D)
        if x.shape[1] != self.cfg.n_patches:
            raise ValueError(f"{x.shape[1]} patches, but the model was built for "
                             f"{self.cfg.image_size}x{self.cfg.image_size} images "
                             f"({self.cfg.n_patches} patches)")
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, T, D)
        if self.pos_emb is not None:
            x = x + self.pos_emb
        elif self.pos_table is not None:
            x = x + self.pos_table.to(x.dtype)
        x = self.drop(x)
        weights = []
        for block in self.blocks:
            x, w = block(x, need_weights=need_weights)
            weights += w
        return self.final_norm(x), weights

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D): the class token's vector, or the mean over the patches."""
        return hidden[:, 0] if self.cls_token is not None else hidden.mean(dim=1)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, C, H, W) -> class logits (B, L), and their cross-entropy against ``labels``
        (label-smoothed in training mode when ``label_smoothing`` is set)."""
        hidden, _ = self.hidden_states(pixel_values)
        logits = self.classifier(self.pool(hidden))  # (B, L)
        smoothing = self.cfg.label_smoothing if self.training else 0.0
        loss = None if labels is None else F.cross_entropy(logits.float(), labels,
                                                           label_smoothing=smoothing)
        return logits, loss

    def attention_maps(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every layer, (B, nh, T, T) each (class token first)."""
        return self.hidden_states(pixel_values, need_weights=True)[1]

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.pos_emb is not None:
            n -= self.pos_emb.numel()
        return n

    def describe(self) -> str:
        cfg = self.cfg
        return (f"{self.num_params() / 1e6:.2f}M parameters | vit, {cfg.n_layers} layers, d_model "
                f"{cfg.d_model}, {cfg.n_heads} heads | {cfg.image_size}x{cfg.image_size}x"
                f"{cfg.channels} images, {cfg.patch_size}x{cfg.patch_size} patches "
                f"({cfg.n_patches}), pool {cfg.pool}, pos {cfg.pos}, {cfg.norm_position}-"
                f"{cfg.norm}, ffn {cfg.ffn} | {cfg.n_labels} classes")
