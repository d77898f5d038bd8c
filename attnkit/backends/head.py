"""The oneDNN back-end's output layers: :class:`~attnkit.nn.OutputHead` answered faster.

With a language model's vocabulary the output layer is the largest single matrix a decode
step reads (GPT-2's 50257 x 768 is 154 MB in fp32), and on a CPU the packed decode path of
:class:`~attnkit.backends.onednn.OneDNNLinear` reads it in 3.5 ms instead of 8.7 ms
(``nn.Linear``). Both classes here are that layer, plus one answer each:

- :class:`TrainHead` (``purpose="train"``): ``logits_and_loss`` fuses the output layer with
  the cross-entropy chunk by chunk (:mod:`attnkit.backends.loss`) and returns ``(None, loss)``:
  the (B, T, V) logits, the largest tensor of a training step, are never built.
- :class:`DecodeHead` (``purpose="decode"``): ``greedy`` finds the argmax of the fp32 logits
  reading half the bytes, as follows.

Greedy decoding needs only the argmax of the logits, and :meth:`DecodeHead.greedy` finds the
fp32 argmax while reading half the bytes: on a CPU that multiplies bf16 natively it first
computes every logit from bf16 copies of ``x`` and the weight (a packed bf16 copy, 77 MB for
GPT-2), with a bound on how far each can be from the true logit, then computes in fp32 only
the rows that could still be the largest (usually a handful). The bound, for row i with
weights w_i, bf16's unit roundoff u = 2^-8 and an fp32 sum of C terms (gamma = C 2^-24 /
(1 - C 2^-24)):

    |screen_i - logit_i| <= (2u + u^2 + 2 gamma (1 + u)^2) ||x|| ||w_i|| + u / (1 - u) |screen_i|
                            + C 2^-126 (max|x| + max|w|)

(rounding x and w_i to bf16; the fp32 sums of the screen and of the exact product; the
screen's rounding of its result to bf16; inputs below bf16's normal range read as zero).
Every row whose upper bound reaches the largest lower bound is a candidate, so the row with
the largest logit always is one; its exact fp32 logits decide. If more than
``SCREEN_MAX_CANDIDATES`` rows pass, the full fp32 product decides instead. The result is
the argmax of the fp32 logits as any fp32 kernel computes them (rows whose fp32 logits
differ in the last bit may be ordered differently by different kernels, as between
attnkit and ``transformers``).
"""

import torch

from attnkit.backends.loss import linear_cross_entropy
from attnkit.backends.onednn import PACKED_DTYPES, OneDNNLinear, onednn_linear, pack
from attnkit.nn.head import OutputHead

SCREEN_NUMEL = 2**22  # weights from which the screen pays: its ~70 us of work over the rows
# lost to the plain product on 50257 x 64 (199 us against 133) and won on 50257 x 128 (215
# against 315) and 50257 x 768 (2.1 ms against 3.7)
SCREEN_MAX_CANDIDATES = 4096  # rows beyond which the full fp32 product is cheaper


class TrainHead(OneDNNLinear, OutputHead):
    """:class:`~attnkit.nn.OutputHead` whose loss in training mode, in fp32 or bf16 autocast
    with fp32 weights on a CPU, is the fused chunked one (no logits: ``(None, loss)``); other
    cases (evaluation included, which may read the logits) as the plain class."""

    def logits_and_loss(self, x: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
                        ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if not self.training or x.device.type != "cpu" or self.weight.dtype != torch.float32 \
                or torch.compiler.is_compiling():
            return super().logits_and_loss(x, targets, ignore_index)
        low = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        return None, linear_cross_entropy(x.flatten(0, 1), self.weight, targets.flatten(),
                                          ignore_index=ignore_index, compute_dtype=low)


class DecodeHead(OneDNNLinear, OutputHead):
    """:class:`~attnkit.nn.OutputHead` with the bf16 greedy screen of the module doc."""

    _screen: tuple | None = None  # (weight key, (packed bf16 weight, row norms, max|w|))

    def greedy(self, x: torch.Tensor) -> torch.Tensor:
        """The argmax of ``self(x)`` for ``x`` (N, C) -> (N,), through the bf16 screen where it
        applies (see the module doc): fp32 on a CPU with native bf16, a few rows, inference."""
        if not (self.decodes_fast(x) and x.dtype == torch.float32 and torch.bfloat16 in PACKED_DTYPES
                and self.weight.numel() >= SCREEN_NUMEL and x.dim() == 2):
            return self(x).argmax(-1)
        packed, norms, w_max = self.from_weight(
            "_screen", lambda w: (pack(w.to(torch.bfloat16)), w.norm(dim=1), w.abs().max()))
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        screen = onednn_linear(x.to(torch.bfloat16), packed, bias).float()  # (N, V)
        return torch.stack([self._pick(x[r], screen[r], norms, w_max) for r in range(len(x))])

    def _pick(self, x: torch.Tensor, screen: torch.Tensor, norms: torch.Tensor,
              w_max: torch.Tensor) -> torch.Tensor:
        """The fp32 argmax for one row ``x`` (C,) from its screen (V,)."""
        C = x.shape[0]
        u, gamma = 2.0**-8, C * 2.0**-24 / (1 - C * 2.0**-24)
        slack = (2 * u + u * u + 2 * gamma * (1 + u) ** 2) * x.norm() * norms
        slack += u / (1 - u) * screen.abs() + C * 2.0**-126 * (x.abs().max() + w_max)
        if self.bias is not None:  # the bias was rounded to bf16 too
            slack += u * self.bias.abs()
        candidates = (screen + slack >= (screen - slack).max()).nonzero()[:, 0]
        if not 0 < len(candidates) <= SCREEN_MAX_CANDIDATES:  # NaN, or no better than all
            return self(x[None]).argmax(-1)[0]
        exact = self.weight.index_select(0, candidates) @ x
        if self.bias is not None:
            exact += self.bias[candidates]
        return candidates[exact.argmax()]
