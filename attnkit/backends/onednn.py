"""The oneDNN back-end's linear layer: ``nn.Linear``'s function, with oneDNN's products for
decoding (fp32 and bf16) and training (fp32) on a CPU.

:func:`attnkit.backends.accelerate` swaps the class of every plain ``nn.Linear`` of a model to
:class:`OneDNNLinear` (same parameters, same state-dict keys); the model code never sees it.

Decoding one token multiplies a single row (or a few) by every weight matrix of the model,
so its speed is how fast those matrices stream from memory. In fp32 PyTorch runs that
product through MKL, which on this project's 2-core machines reads a (out, in) weight at
about 18 GB/s and its (in, out) transpose (the layout of GPT-2's ``Conv1D``) at about 22
GB/s, while oneDNN, given the same weight reordered into its blocked layout once, reads it
at about 36 GB/s: a stack of gpt2-124m's 48 block matrices took 9.4 ms against 18.7 ms
(``nn.Linear``) and 15.4 ms (transposed). bf16 alike: PyTorch's own bf16 product read
gpt2-124m's matrices at 22-29 GB/s, a packed copy at 42-50 GB/s, with the same results. So
under ``torch.inference_mode`` on a CPU, for up to ``FAST_ROWS`` rows of fp32 (or bf16, on a
CPU that multiplies bf16 natively: ``PACKED_DTYPES``), a weight of at least ``FAST_NUMEL``
elements is used through a oneDNN-packed copy (``torch.ops.mkldnn._reorder_linear_weight``),
made on first use and remade whenever the weight changes (its version counter moves on
every in-place update: optimizer steps, ``load_state_dict``). The product is the same to
float rounding.

The copy costs one more matrix of memory per weight while a model decodes on a CPU;
training, other devices, fp16, small weights (the oneDNN call costs ~15 us more than a
small product) and code under ``torch.compile`` take the plain ``nn.Linear`` path.
Parameters and state-dict keys are those of ``nn.Linear``.

Training takes oneDNN too. On the AMD CPUs this project runs on, MKL (PyTorch's fp32 matrix
product) does not use AVX-512 and multiplies at ~200 GFLOP/s, where oneDNN reaches ~420-460
GFLOP/s on the same shapes with fp32 accuracy (gpt2-124m's 2048 x 768 x 3072 products: 50.7
ms against 22.8 ms forward; the two backward products alike). So a training step in fp32 on a
CPU, outside autocast and ``torch.compile``, runs the forward and both backward products of
every large enough layer (``TRAIN_MACS``) through ``torch.ops.mkldnn._linear_pointwise``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.devices import cpu_has_native_bf16

FAST_ROWS = 8  # rows (batch x new tokens) up to which decoding takes the packed path
FAST_NUMEL = 2**17  # the smallest weight worth it: 384 x 384 is, 128 x 512 is not
TRAIN_MACS = 2**22  # rows x weights from which a training product goes through oneDNN
COPY_NUMEL = 2**20  # weights from which the weight gradient's operands are copied first


def _can_pack() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                            "_reorder_linear_weight")


PACKING = _can_pack()


# the precisions whose decode products go through a packed weight: bf16 only where the CPU
# multiplies it natively (measured there; elsewhere bf16 keeps PyTorch's path)
PACKED_DTYPES = (torch.float32, torch.bfloat16) if cpu_has_native_bf16() else (torch.float32,)


def cpu_fp32(x: torch.Tensor) -> bool:
    """Whether ``x`` is where attnkit's oneDNN paths apply: fp32 on a CPU whose torch has
    oneDNN, outside ``torch.compile`` (compiled code keeps PyTorch's own kernels)."""
    return (PACKING and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.compiler.is_compiling())


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (N, K) reordered for oneDNN's decode products (a copy; see the module doc).
    The row-count hint is FAST_ROWS: packed for 8 rows, a weight streams at 43-52 GB/s here
    against 30-43 GB/s packed for 1, whether 1 or 8 rows are then multiplied."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), FAST_ROWS)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """``x @ weight.T + bias`` by oneDNN (no autograd); ``x`` (..., K), ``weight`` (N, K), either
    may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with its three products (forward, input and weight gradients) by oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])  # (M, N)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # (M, N) @ (N, K); oneDNN reads the transposed view as fast as a copy (no copy)
            grad_x = onednn_linear(g, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:  # (N, M) @ (M, K)
            x_t = x.reshape(-1, x.shape[-1]).t()  # (K, M)
            if weight.numel() >= COPY_NUMEL:  # both operands made M-contiguous: the copies
                # and a product in the forward's layout (2048 x 3072 x 768: 26.3 ms) beat
                # oneDNN's product over the transposed views (28.6 ms); not for 768 x 768
                grad_w = onednn_linear(g.t().contiguous(), x_t.contiguous())
            else:
                grad_w = onednn_linear(g.t(), x_t)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose fp32 products on a CPU go
    through oneDNN: packed weights when decoding, :class:`_OneDNNLinear` when training."""

    _packed: tuple | None = None  # ((data_ptr, version), packed weight); see from_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decodes_fast(x):
            return onednn_linear(x, self.from_weight("_packed", pack), self.bias)
        if self._train_fast(x):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def from_weight(self, name: str, make):
        """``make(weight)``, kept in attribute ``name`` and made again only when the weight
        is another tensor or was updated in place (its version counter moved)."""
        w = self.weight
        key = (w.data_ptr(), w._version)
        kept = getattr(self, name)
        if kept is None or kept[0] != key:
            kept = (key, make(w))
            setattr(self, name, kept)
        return kept[1]

    def _cpu_fp32(self, x: torch.Tensor) -> bool:
        """The cheap checks both paths share, first, so small models lose little to them."""
        return cpu_fp32(x) and self.weight.dtype == torch.float32

    def _train_fast(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (self._cpu_fp32(x) and x.numel() // x.shape[-1] * w.numel() >= TRAIN_MACS
                and not torch.is_inference_mode_enabled()
                and type(x) is torch.Tensor and type(w) is nn.Parameter
                and not torch.is_autocast_enabled("cpu"))

    def decodes_fast(self, x: torch.Tensor) -> bool:
        """Whether this product decodes through the packed weight (fp32, or bf16 on a CPU
        with native bf16)."""
        # is_compiling comes before is_inference_mode_enabled, which would break a graph
        return (self.weight.numel() >= FAST_NUMEL and x.numel() <= FAST_ROWS * x.shape[-1]
                and x.dtype in PACKED_DTYPES and self.weight.dtype == x.dtype
                and PACKING and x.device.type == "cpu" and not torch.compiler.is_compiling()
                and torch.is_inference_mode_enabled())
