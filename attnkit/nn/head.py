"""The output projection (hidden state -> vocabulary logits).

An ``nn.Linear`` of its own class so that the model's structure says what the layer is, a tied
embedding keeps one ``weight``, and the two questions a model asks of it have one place each:
the argmax of the logits (greedy decoding) and the logits with their loss (training). Both
are plain PyTorch here; a back-end (:mod:`attnkit.backends`) swaps in a class that answers
them faster and gives the same answers.
"""

import torch
import torch.nn.functional as F
from torch import nn


class OutputHead(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) for the vocabulary projection."""

    def greedy(self, x: torch.Tensor) -> torch.Tensor:
        """The argmax of ``self(x)``: ``x`` (N, C) -> token ids (N,)."""
        return self(x).argmax(-1)

    def logits_and_loss(self, x: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
                        ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``x`` (B, T, C), ``targets`` (B, T) -> logits (B, T, V) and their mean cross-entropy,
        positions whose target is ``ignore_index`` left out (computed in fp32)."""
        logits = self(x)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               ignore_index=ignore_index)
        return logits, loss
