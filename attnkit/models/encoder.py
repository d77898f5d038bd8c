"""A bidirectional Transformer encoder (BERT style): masked-LM, classification, embeddings.

The same :class:`~attnkit.nn.Block` as the decoder, with ``causal=False`` so every
token attends to every other (Devlin et al., 2019). What the encoder adds:

- segment (token type) embeddings and a norm after the embedding sum (BERT);
- a padding mask: ``attention_mask`` (B, T), 1 for real tokens and 0 for padding,
  keeps padding out of every attention layer and out of the pooled vectors;
- three heads: BERT's masked-LM head, a sequence classifier, and ``embed`` - the
  mean of the last hidden states over real tokens (sentence-transformers).

Contract shared by every family: ``logits, loss = model(input_ids, targets=None)``;
the encoder adds keyword arguments (see :meth:`Encoder.forward`)::

    model(ids)                    MLM logits (B, T, V); class logits (B, L) when n_labels > 0
    model(ids, targets)           MLM logits and the masked-LM loss (targets -100 where unmasked)
    model(ids, labels=labels)     class logits (B, L) and the cross-entropy against labels (B,)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.config import EncoderConfig
from attnkit.models.common import (
    ADDITIVE_POSITIONS,
    describe,
    init_weights,
    make_blocks,
    make_final_norm,
    make_rope,
)
from attnkit.models.contract import Abilities
from attnkit.nn import FFNS, NORMS
from attnkit.nn.ffn import ACTIVATIONS
from attnkit.nn.positional import LearnedPositional


class MLMHead(nn.Module):
    """BERT's ``cls.predictions``: dense -> activation -> norm, then a projection to the
    vocabulary (tied to the token embedding by the model) with its own bias."""

    def __init__(self, d_model: int, vocab_size: int, activation: str, norm: nn.Module,
                 bias: bool = True) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model, bias=bias)
        self.act = ACTIVATIONS[activation]  # BERT's transform uses hidden_act, the FFN's
        self.norm = norm
        self.out = nn.Linear(d_model, vocab_size, bias=True)  # BERT keeps this bias when tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, V)."""
        return self.out(self.norm(self.act(self.dense(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("EncoderConfig.vocab_size must be set before building a model")
        self.cfg = cfg
        self.abilities = Abilities(embeds=True, attention_maps=True, masked_lm=cfg.mlm_head,
                                   classifies=cfg.n_labels > 0)
        norm = NORMS[cfg.norm]
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        pos_cls = ADDITIVE_POSITIONS.get(cfg.pos)
        self.pos_emb = pos_cls(cfg.context_length, cfg.d_model) if pos_cls else None
        self.seg_emb = (nn.Embedding(cfg.type_vocab_size, cfg.d_model)
                        if cfg.type_vocab_size > 0 else None)
        self.emb_norm = (norm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
                         if cfg.embedding_norm else nn.Identity())
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = make_blocks(cfg, cfg.n_layers, causal=False, rope=make_rope(cfg))
        self.final_norm = make_final_norm(cfg)  # BERT is post-LN: an identity
        self.mlm_head = (MLMHead(cfg.d_model, cfg.vocab_size, FFNS[cfg.ffn][1],
                                 norm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias), cfg.bias)
                         if cfg.mlm_head else None)
        # Classification: pool (the [CLS] vector or the mean), then BERT's pooler (dense + tanh),
        # dropout and a linear layer. With pooling "cls" this is BertForSequenceClassification.
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if cfg.n_labels > 0 else None
        self.classifier = nn.Linear(cfg.d_model, cfg.n_labels) if cfg.n_labels > 0 else None
        self.apply(lambda m: init_weights(m, cfg.init_std))  # BERT's initialisation
        if self.mlm_head is not None and cfg.tie_embeddings:  # Press & Wolf (2017), as BERT
            self.mlm_head.out.weight = self.tok_emb.weight

    def hidden_states(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None, need_weights: bool = False
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last hidden states (B, T, C), and with ``need_weights`` the attention weights
        of every layer, each (B, nh, T, T), computed on the eager path.

        ``attention_mask`` (B, T) is 1 (or True) for real tokens and 0 for padding; padded
        keys get no attention. Hidden states *at* padded positions are computed but
        meaningless. ``token_type_ids`` (B, T) default to segment 0, as in BERT.
        """
        B, T = input_ids.shape
        if self.cfg.pos == "learned" and T > self.cfg.context_length:
            raise ValueError(f"sequence of {T} tokens exceeds the learned position table of "
                             f"{self.cfg.context_length}")
        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=input_ids.device))
        if self.seg_emb is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.seg_emb(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but the model has no segment embeddings "
                             "(EncoderConfig.type_vocab_size is 0)")
        x = self.drop(self.emb_norm(x))
        keep = None if attention_mask is None else attention_mask.bool()  # (B, T)
        weights = []
        for block in self.blocks:
            x, w = block(x, key_padding_mask=keep, need_weights=need_weights)
            weights += w
        return self.final_norm(x), weights

    # --- heads -------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``input_ids`` (B, T) -> ``(logits, loss)``; the head is chosen by what is given.

        - ``targets`` (B, T): the masked-LM head; logits (B, T, V), loss the mean
          cross-entropy over positions whose target is not -100.
        - ``labels`` (B,): the classification head; logits (B, n_labels), loss the mean
          cross-entropy.
        - neither: the classification head if the model has one (``n_labels > 0``), else MLM.
        """
        if targets is not None and labels is not None:
            raise ValueError("pass targets (masked-LM) or labels (classification), not both")
        x, _ = self.hidden_states(input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids)
        if labels is not None or (targets is None and self.classifier is not None):
            logits = self.classify(x, attention_mask)
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
            return logits, loss
        if self.mlm_head is None:
            raise ValueError("this encoder has no masked-LM head (EncoderConfig.mlm_head is "
                             "false)")
        logits = self.mlm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                   ignore_index=-100)
        return logits, loss

    def classify(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Class logits (B, n_labels) from the last hidden states (B, T, C)."""
        if self.classifier is None:
            raise ValueError("this encoder has no classification head (EncoderConfig.n_labels "
                             "is 0)")
        if self.cfg.pooling == "cls":
            pooled = hidden[:, 0]  # (B, C): the first token, [CLS] in BERT's inputs
        else:
            pooled = mean_pool(hidden, attention_mask)
        pooled = torch.tanh(self.pooler(pooled))
        return self.classifier(self.drop(pooled))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
              token_type_ids: torch.Tensor | None = None, normalize: bool = False
              ) -> torch.Tensor:
        """Sentence embeddings (B, C): the mean of the last hidden states over real tokens
        (sentence-transformers' mean pooling); unit length with ``normalize``."""
        hidden, _ = self.hidden_states(input_ids, attention_mask=attention_mask,
                                       token_type_ids=token_type_ids)
        out = mean_pool(hidden, attention_mask)
        return F.normalize(out, dim=-1) if normalize else out

    @torch.no_grad()
    def attention_maps(self, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Attention weights of every layer, (B, nh, T, T) each, whatever the training back-end."""
        return self.hidden_states(input_ids, attention_mask=attention_mask, need_weights=True)[1]

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; tied weights once, learned position table excluded if asked."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and isinstance(self.pos_emb, LearnedPositional):
            n -= self.pos_emb.weight.numel()
        return n

    def describe(self) -> str:
        return describe(self, f"{self.cfg.n_layers} layers")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, C) over the positions where ``attention_mask`` (B, T) is set."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
