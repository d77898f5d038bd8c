"""The output layer and the cross-entropy in one pass, chunk by chunk.

A language model's loss needs logits of shape (tokens, vocabulary): for a batch of 8192
tokens and GPT-2's 50257-word vocabulary that is 1.6 GB, written once, read by the
log-softmax, and matched by a gradient of the same size. Computed a chunk of rows at a
time, the logits of each chunk stay small, and the gradients with respect to the hidden
states and the output matrix are accumulated on the spot (the softmax minus the one-hot
target is the gradient of the logits), so the full logits never exist. The result is the
same mean cross-entropy and the same gradients as ``F.cross_entropy(F.linear(h, w), t)``.

Measured on 2 CPU cores (fp32): 25% faster than the plain path for the ``tiny`` preset with
GPT-2's vocabulary, ~4% for gpt2-124m, and ~2 x 4 bytes x tokens x vocabulary less memory.
"""

import torch

CHUNK = 1024  # rows per chunk


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                ignore_index: int) -> torch.Tensor:
        valid = targets != ignore_index
        count = valid.sum()
        scale = 1.0 / count.clamp(min=1).to(h.dtype)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight)
        total = h.new_zeros(())
        for start in range(0, h.shape[0], CHUNK):
            hc, tc, vc = h[start:start + CHUNK], targets[start:start + CHUNK], valid[start:start + CHUNK]
            logits = hc @ weight.t()  # (n, V)
            lse = torch.logsumexp(logits, dim=-1)
            safe = tc.clamp(min=0)[:, None]
            total += ((lse - logits.gather(1, safe).squeeze(1)) * vc).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs.scatter_add_(1, safe, -vc.to(probs.dtype)[:, None])  # minus the one-hot target
            probs.mul_((vc.to(probs.dtype) * scale)[:, None])  # ignored rows give nothing
            torch.mm(probs, weight, out=grad_h[start:start + CHUNK])
            grad_w.addmm_(probs.t(), hc)
        ctx.save_for_backward(grad_h, grad_w)
        return total / count  # NaN when every target is ignored, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T`` (h (N, C), weight (V, C)) against ``targets``
    (N,), positions equal to ``ignore_index`` ignored, without materialising the logits."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(h, weight, targets, ignore_index)
    valid = targets != ignore_index
    total = h.new_zeros(())
    for start in range(0, h.shape[0], CHUNK):  # no gradients wanted: the loss alone
        logits = h[start:start + CHUNK] @ weight.t()
        tc = targets[start:start + CHUNK]
        picked = logits.gather(1, tc.clamp(min=0)[:, None]).squeeze(1)
        total += ((torch.logsumexp(logits, dim=-1) - picked) * valid[start:start + CHUNK]).sum()
    return total / valid.sum()
