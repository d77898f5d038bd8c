"""Training throughput and model-FLOPs utilisation: attnkit against Hugging Face
``GPT2LMHeadModel`` on identical weights and batches.

The script first measures this machine's fp32 matrix-multiply peak (the best of several
large square products, by each library PyTorch offers: MKL and oneDNN on a CPU), then times
full training steps (forward, loss, backward, gradient clipping, AdamW step) of the
gpt2-style ``tiny`` preset and ``gpt2-124m`` at context 256 and 1024. attnkit trains as
``attnkit train`` does (its AdamW parameter groups, fused on CPU; its fp32 products by oneDNN
on a CPU, ``attnkit.backends.onednn``); the reference uses ``torch.optim.AdamW`` with PyTorch's defaults,
as a ``transformers`` user would. MFU counts the matrix-multiply work of a step,
6 x (parameters in matrix products, output layer included) per token plus the attention
scores, 12 x layers x d_model x context per token (PaLM, appendix B), over the measured
peak. Results go to ``benchmarks/results/train.json`` (``train-bf16.json`` for bf16).

``--precision bf16`` trains both sides under bf16 autocast (``--train.precision=bf16``; on a
CPU only worth it with native bf16, AVX512-BF16 or AMX) and measures the bf16 peak instead.
Both sides run in this one process with the allocator setting the ``attnkit`` command makes
(:mod:`attnkit.runtime`: freed memory is kept for reuse); ``--malloc default`` runs both with
glibc's defaults instead, as a plain Python process has them.

A case is SIZE:CONTEXT, with the batch of ``BATCH``, or SIZE:CONTEXT:BATCH. gpt2-124m at
context 1024 runs at batch 2 (2048 tokens a step, as the other cases) and at batch 4, where
the products have 4096 rows: on a CPU the larger step is the faster one per token.

    python benchmarks/train.py [--cases tiny:256 tiny:1024 gpt2-124m:256 gpt2-124m:1024 ...]
                               [--precision fp32|bf16] [--malloc keep|default] [--compile]
"""

import argparse
import time

import torch
from reference import add_malloc_option, apply_malloc, hf_twin, write_results

from attnkit.backends import accelerate
from attnkit.backends.onednn import PACKING, onednn_linear
from attnkit.config import ModelConfig, TrainConfig, expand_presets
from attnkit.models import Decoder
from attnkit.train.optim import build_optimizer

VOCAB = 50257
BATCH = {("tiny", 256): 32, ("tiny", 1024): 8, ("gpt2-124m", 256): 8, ("gpt2-124m", 1024): 2}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5
                ) -> tuple[float, dict[str, float]]:
    """FLOP/s of the best (n x n) @ (n x n) product on ``device`` in ``dtype``, over every
    matrix-multiply library PyTorch offers there: ``torch.mm`` (MKL on a CPU, cuBLAS on a GPU)
    and, on a CPU, oneDNN (``attnkit.backends.onednn.onednn_linear``, which attnkit trains with; on
    AMD CPUs MKL leaves AVX-512 unused and oneDNN is about twice as fast in fp32). Returns the
    peak and the figure of each library."""
    if device.type == "cuda":
        n = 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    c = a @ b  # the product is written into c, so no allocation is timed
    kernels = {"torch.mm": lambda: torch.mm(a, b, out=c)}
    if device.type == "cpu" and PACKING:
        kernels["oneDNN"] = lambda: onednn_linear(a, b)
    figures = {name: 2 * n**3 / time_steps(product, repeats, device)[0]
               for name, product in kernels.items()}
    return max(figures.values()), figures


def flops_per_token(cfg: ModelConfig, context: int) -> float:
    """6 x matmul parameters (blocks and output layer) + 12 x L x C x T for attention."""
    C, L = cfg.d_model, cfg.n_layers
    per_layer = 4 * C * C + 2 * C * 4 * C  # q, k, v, o and the two MLP matrices
    matmul_params = L * per_layer + cfg.vocab_size * C
    return 6 * matmul_params + 12 * L * C * context


def time_steps(step, steps: int, device: torch.device) -> tuple[float, object]:
    """(best seconds per step over ``steps`` timed steps after one warm-up, what the warm-up
    returned: the first loss of a training step)."""
    first = step()
    best = float("inf")
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, first


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA (what ``attnkit train`` picks there) or when asked for."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or bf16)


def training_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss_of, device,
                  bf16: bool = False):
    """One full step (forward under autocast, backward, clipping at 1.0, optimizer); the
    step returns the loss."""
    def step() -> float:
        with autocast(device, bf16):
            loss = loss_of()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def attnkit_step(model: Decoder, x: torch.Tensor, compiled: bool = False, bf16: bool = False):
    accelerate(model.train(), purpose="train")  # as the trainer does
    opt = build_optimizer(model, TrainConfig(), x.device.type)
    forward = torch.compile(model) if compiled else model  # what --train.compile=true does
    return training_step(model, opt, lambda: forward(x[:, :-1], x[:, 1:])[1], x.device, bf16)


def hf_step(hf, x: torch.Tensor, bf16: bool = False):
    opt = torch.optim.AdamW(hf.parameters(), lr=2e-3, betas=(0.9, 0.99), weight_decay=0.1)
    # transformers shifts the labels itself
    return training_step(hf, opt, lambda: hf(input_ids=x[:, :-1], labels=x[:, :-1]).loss,
                         x.device, bf16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+",
                        default=["tiny:256", "tiny:1024", "gpt2-124m:256", "gpt2-124m:1024",
                                 "gpt2-124m:1024:4"],
                        help="SIZE:CONTEXT or SIZE:CONTEXT:BATCH")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (best is kept)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-reference", action="store_true", help="attnkit only")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast, TF32)")
    parser.add_argument("--batch", type=int, default=None, help="override the batch per case")
    parser.add_argument("--compile", action="store_true",
                        help="also time attnkit under torch.compile (--train.compile=true); the "
                             "compilation is the warm-up step, reported apart")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="fp32 (default on CPU) or bf16 autocast (default on CUDA)")
    add_malloc_option(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = apply_malloc(args.malloc)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    bf16 = precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak, figures = matmul_peak(device, dtype)
    each = ", ".join(f"{k} {v / 1e12:.2f}" for k, v in figures.items())
    print(f"{str(dtype).removeprefix('torch.')} matmul peak {peak / 1e12:.2f} TFLOP/s on {device} "
          f"({each}; {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{'freed memory kept' if kept else 'default malloc'})")
    print(f"{'model':<10} {'ctx':>5} {'batch':>5} {'attnkit tok/s':>14} {'MFU':>5} "
          f"{'HF tok/s':>9} {'MFU':>5} {'ratio':>6}  first loss (attnkit / HF)")
    rows = []
    for case in args.cases:
        size, ctx, *fixed = case.split(":")
        ctx = int(ctx)
        batch = args.batch or (int(fixed[0]) if fixed else BATCH.get((size, ctx), 4))
        torch.manual_seed(0)
        cfg = ModelConfig(**expand_presets({"size": size, "style": "gpt2", "vocab_size": VOCAB,
                                            "context_length": ctx, "dropout": 0.0}))
        model = Decoder(cfg).train()
        x = torch.randint(0, VOCAB, (batch, ctx + 1), device=device)
        hf = None
        if not args.no_reference:
            hf = hf_twin(model).train().to(device)
        model.to(device)
        fpt = flops_per_token(cfg, ctx)
        tokens = batch * ctx
        t_ours, loss_ours = time_steps(attnkit_step(model, x, bf16=bf16), args.steps, device)
        row = {"size": size, "params": model.num_params(), "context": ctx, "batch": batch,
               "attnkit_tokens_per_s": round(tokens / t_ours, 1),
               "attnkit_mfu": round(fpt * tokens / t_ours / peak, 4)}
        line = (f"{size:<10} {ctx:>5} {batch:>5} {tokens / t_ours:>14.1f} "
                f"{row['attnkit_mfu']:>5.0%}")
        if hf is not None:
            t_hf, loss_hf = time_steps(hf_step(hf, x, bf16), args.steps, device)
            row.update({"hf_tokens_per_s": round(tokens / t_hf, 1),
                        "hf_mfu": round(fpt * tokens / t_hf / peak, 4),
                        "ratio": round(t_hf / t_ours, 3),
                        "first_loss": [round(loss_ours, 5), round(loss_hf, 5)]})
            line += (f" {tokens / t_hf:>9.1f} {row['hf_mfu']:>5.0%} {t_hf / t_ours:>5.2f}x"
                     f"  {loss_ours:.4f} / {loss_hf:.4f}")
        if args.compile:
            t0 = time.perf_counter()
            t_comp, _ = time_steps(attnkit_step(model, x, compiled=True, bf16=bf16), args.steps,
                                   device)
            warm = time.perf_counter() - t0 - args.steps * t_comp
            row.update({"compiled_tokens_per_s": round(tokens / t_comp, 1),
                        "compiled_mfu": round(fpt * tokens / t_comp / peak, 4),
                        "compile_s": round(warm, 1)})
            if hf is not None:
                row["compiled_ratio"] = round(t_hf / t_comp, 3)
            line += (f"\n{'':<10} {'':>5} {'':>5} {tokens / t_comp:>14.1f} "
                     f"{row['compiled_mfu']:>5.0%}  compiled (first step {warm:.0f} s)"
                     + (f", {t_hf / t_comp:.2f}x the reference" if hf is not None else ""))
        print(line, flush=True)
        rows.append(row)
    write_results("train", device, kept, {
        "device": str(device), "precision": precision, "malloc_kept": kept,
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "matmul_gflops": {k: round(v / 1e9, 1) for k, v in figures.items()}, "rows": rows},
        tags=("bf16",) if bf16 else ())


if __name__ == "__main__":
    main()
