"""The recurrent baseline: a stacked LSTM language model (Hochreiter & Schmidhuber, 1997).

It honours the same contract as every Transformer family,
``logits, loss = model(input_ids, targets=None)``, and the same incremental
decoding interface (``new_cache`` / ``cache=``), so the trainer, the sampler
and the experiments treat it exactly like a decoder. Its "cache" is simply the
recurrent state: one (h, c) pair per layer, which is all an RNN remembers -
the bottleneck self-attention removes.
"""

from __future__ import annotations

import torch
from torch import nn

from attnkit.config import LSTMConfig
from attnkit.models.contract import Abilities
from attnkit.nn import OutputHead


class LSTMState:
    """The recurrent state carried between calls during generation."""

    def __init__(self) -> None:
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.length = 0

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.state, self.length = None, 0

    def reorder(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (beam search): h and c are (n_layers, B, C)."""
        if self.state is not None:
            self.state = tuple(s.index_select(1, indices) for s in self.state)


class LSTMLanguageModel(nn.Module):
    abilities = Abilities(generates=True)

    def __init__(self, cfg: LSTMConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("LSTMConfig.vocab_size must be set before building a model")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(cfg.d_model, cfg.d_model, num_layers=cfg.n_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.n_layers > 1 else 0.0)
        self.lm_head = OutputHead(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.normal_(self.tok_emb.weight, std=cfg.init_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=cfg.init_std)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: LSTMState | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``input_ids`` (B, T) -> logits (B, T, V), and the mean cross-entropy with ``targets``
        (positions whose target is -100 are ignored)."""
        x = self.hidden(input_ids, cache=cache)  # (B, T, C)
        if targets is None:
            return self.lm_head(x), None  # (B, T, V)
        return self.lm_head.logits_and_loss(x, targets)

    def hidden(self, input_ids: torch.Tensor, *, cache: LSTMState | None = None,
               positions: torch.Tensor | None = None,
               key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's outputs (B, T, C), before the output layer. With a ``cache``, the
        recurrent state carries over from the previous call. An LSTM reads its input left to
        right, so it takes no ``positions`` and cannot skip left padding."""
        if key_padding_mask is not None and not bool(key_padding_mask.all()):
            raise ValueError("an LSTM cannot skip padding: decode the prompts one at a time")
        del positions  # a recurrence counts positions by itself
        x = self.drop(self.tok_emb(input_ids))  # (B, T, C)
        out, state = self.lstm(x, cache.state if cache is not None else None)  # (B, T, C)
        if cache is not None:
            cache.state = state
            cache.advance(input_ids.shape[1])
        return self.drop(out)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> LSTMState:
        del batch_size, max_len  # the state is created on the first call
        return LSTMState()

    def num_params(self, non_embedding: bool = True) -> int:
        del non_embedding
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        return (f"{self.num_params() / 1e6:.2f}M parameters | LSTM, {self.cfg.n_layers} layers, "
                f"d_model {self.cfg.d_model}")
