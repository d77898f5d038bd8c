"""The output projection (hidden state -> vocabulary logits), with a fast path for decoding.

``nn.Linear`` keeps its weight as (V, C). On a CPU, a matrix-vector product streams
that layout ~1.6x slower than the same product against a (C, V) copy (measured on
this project's 2-core machines: 8.8 ms against 5.4 ms for GPT-2's 50257 x 768 head),
and during batch-1 decoding the output layer is the largest single read of the step.
So when few rows are projected under ``torch.inference_mode`` on a CPU, the head uses a
transposed copy of its weight, made once and rebuilt whenever the weight changes (its
version counter moves on every in-place update: optimizer steps, ``load_state_dict``).
The copy costs one more V x C matrix of memory while a model is decoding; training, every
other device and half-precision weights use the plain ``nn.Linear`` path (in bf16 and fp16
the (V, C) layout is the faster one: 2.8 ms against 3.9 ms in bf16 for GPT-2's head on a CPU
with AVX512-BF16, and 1.6 ms against 58 ms in fp16). The result is the same product.
"""

import torch
import torch.nn.functional as F
from torch import nn

# When the transposed copy is used: one row, or up to FAST_ROWS rows of at least FAST_WIDTH
# features. Measured on 2 cores for a 50257-word head: 1 x 64 rows 0.14 ms against 0.22;
# 8 x 768 rows 12.2 ms against 16.5; but 8 x 64 rows 1.1 ms against 0.6 (narrow matrices
# multiply faster in nn.Linear's layout once there are several rows).
FAST_ROWS = 8
FAST_WIDTH = 256


class OutputHead(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) with the decode fast path."""

    _transposed: tuple[int, int, torch.Tensor] | None = None  # (data_ptr, version, weight.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        fast = rows == 1 or (rows <= FAST_ROWS and self.in_features >= FAST_WIDTH)
        if (not fast or self.bias is not None or x.device.type != "cpu"
                or self.weight.dtype != torch.float32 or not torch.is_inference_mode_enabled()):
            return F.linear(x, self.weight, self.bias)
        return x @ self.decode_weight()  # (..., C) @ (C, V)

    def decode_weight(self) -> torch.Tensor:
        """The weight as (C, V) for ``x @ w``: on a CPU in fp32 the contiguous transposed copy
        (made once, remade when the weight changes), elsewhere a view of the weight."""
        w = self.weight
        if w.device.type != "cpu" or w.dtype != torch.float32:
            return w.t()
        key = (w.data_ptr(), w._version)
        if self._transposed is None or self._transposed[:2] != key:
            self._transposed = (*key, w.detach().t().contiguous())
        return self._transposed[2]
