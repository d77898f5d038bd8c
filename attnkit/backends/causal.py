"""Causal self-attention with oneDNN products, for fp32 on a CPU.

PyTorch's CPU flash attention multiplies through MKL, which on this project's AMD CPUs leaves
AVX-512 unused (see ``attnkit.backends.onednn``): a gpt2-124m layer at context 1024, batch 2, took
95 ms forward and backward, 22% of a training step. This computes the same function with the
query rows cut into blocks of ``BLOCK``: block i (rows r0..e) meets only the keys 0..e, so about
(n + 1) / 2n of the full square is multiplied (5/8 for four blocks), each product by oneDNN.
Only the last (rows x rows) square of a block needs the causal mask, so the mask is one
(BLOCK x BLOCK) triangle and memory stays linear in the context. The softmax's backward is
PyTorch's fused kernel, which needs the probabilities but not the row sums: a block holds
every key its rows attend to. The probabilities are not kept for the backward (that would be
(B, nh, T, T) per layer): the backward recomputes them, one more product per block, as flash
attention does. Same layer: 69-77 ms.

For dK and dV, whose rows each collect from several query blocks, the backward accumulates
their transposes, dK^T += Q_i^T dS_i: oneDNN wants its first operand's rows contiguous, and
Q_i^T (hs x rows) is small to make where dS_i^T would be a copy of the whole block.

The contract is that of ``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` with
``enable_gqa`` (``n_heads`` a multiple of ``n_kv_heads``): no mask, no dropout, queries and
keys starting together.
"""

import math

import torch

from attnkit.backends.onednn import cpu_fp32, onednn_linear

BLOCK = 256  # query rows per block: 128 spends more on calls, 512 multiplies more of the square
MIN_LENGTH = 512  # below it SDPA's kernel is as fast: one or two blocks save little


def usable(q: torch.Tensor) -> bool:
    """Whether ``q`` (B, nh, T, hs) is a case this kernel is for: fp32 on a CPU, outside
    ``torch.compile``, at least ``MIN_LENGTH`` positions."""
    return q.shape[2] >= MIN_LENGTH and cpu_fp32(q)


_triangles: dict[int, torch.Tensor] = {}


def _triangle(block: int) -> torch.Tensor:
    """(block, block) additive mask: -inf where a key comes after its query (kept per size)."""
    if block not in _triangles:
        later = torch.ones(block, block, dtype=torch.bool).triu(1)
        _triangles[block] = torch.zeros(block, block).masked_fill_(later, float("-inf"))
    return _triangles[block]


def _probs(q: torch.Tensor, k: torch.Tensor, r0: int, triangle: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T, causal) for query rows r0.. of one block: q (rows, hs) already scaled,
    k (e, hs) with e = r0 + rows; only the last (rows, rows) square needs the mask."""
    rows = q.shape[0]
    scores = onednn_linear(q, k)  # (rows, e)
    scores[:, r0:].add_(triangle[:rows, :rows])
    return torch.softmax(scores, dim=-1)


class _BlockCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int
                ) -> torch.Tensor:
        B, nh, T, hs = q.shape
        groups = nh // k.shape[1]
        qs = q.mul(1 / math.sqrt(hs)).contiguous()  # (B, nh, T, hs)
        k, v = k.contiguous(), v.contiguous()  # (B, nkv, T, hs)
        out = q.new_empty(B, T, nh, hs)
        triangle = _triangle(block)
        for b in range(B):
            for h in range(nh):
                qh, kh, vh_t = qs[b, h], k[b, h // groups], v[b, h // groups].t()
                for r0 in range(0, T, block):
                    e = min(r0 + block, T)
                    p = _probs(qh[r0:e], kh[:e], r0, triangle)
                    out[b, r0:e, h] = onednn_linear(p, vh_t[:, :e])  # (rows, hs)
        ctx.save_for_backward(qs, k, v)
        ctx.block = block
        return out.transpose(1, 2)  # (B, nh, T, hs), a view of (B, T, nh, hs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        qs, k, v = ctx.saved_tensors
        B, nh, T, hs = qs.shape
        nkv = k.shape[1]
        groups = nh // nkv
        grad_q = qs.new_empty(B, T, nh, hs)
        # transposed, see the module doc; the last block, which meets every key, comes first
        # and writes where the others add
        grad_k_t = qs.new_empty(B, nkv, hs, T)
        grad_v_t = qs.new_empty(B, nkv, hs, T)
        triangle = _triangle(ctx.block)
        starts = range(0, T, ctx.block)[::-1]  # the last block first
        for b in range(B):
            for h in range(nh):
                hk = h // groups
                qh, kh, vh, gh = qs[b, h], k[b, hk], v[b, hk], grad[b, h]
                for r0 in starts:
                    e = min(r0 + ctx.block, T)
                    p = _probs(qh[r0:e], kh[:e], r0, triangle)  # (rows, e)
                    grad_p = onednn_linear(gh[r0:e], vh[:e])  # (rows, e)
                    # p * (grad_p - rowsum(p * grad_p)): the row covers all its keys
                    grad_s = torch._softmax_backward_data(grad_p, p, -1, p.dtype)
                    grad_q[b, r0:e, h] = onednn_linear(grad_s, kh[:e].t())  # (rows, hs)
                    dk = onednn_linear(qh[r0:e].t().contiguous(), grad_s.t())  # (hs, e)
                    dv = onednn_linear(gh[r0:e].t().contiguous(), p.t())
                    if e == T and h % groups == 0:
                        grad_k_t[b, hk], grad_v_t[b, hk] = dk, dv
                    else:
                        grad_k_t[b, hk, :, :e] += dk
                        grad_v_t[b, hk, :, :e] += dv
        grad_q = grad_q.transpose(1, 2).mul_(1 / math.sqrt(hs))
        return grad_q, grad_k_t.transpose(-1, -2), grad_v_t.transpose(-1, -2), None


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int = BLOCK
                     ) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs), causal) v for q (B, nh, T, hs), k and v (B, nkv, T, hs) ->
    (B, nh, T, hs), the same as ``F.scaled_dot_product_attention(..., is_causal=True,
    enable_gqa=True)`` to float rounding. Call it where :func:`usable` holds."""
    return _BlockCausal.apply(q, k, v, block)
