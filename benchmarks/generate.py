"""Greedy generation speed: attnkit against Hugging Face ``transformers`` ``generate()`` on the
very same weights (exported with ``attnkit.interop.to_hf``), at batch 1 and batch 8.

Each row generates ``--tokens`` new tokens after a short random prompt (all prompts of one
length, so neither side pads); tokens/s counts new tokens over all rows, prefill included,
best of ``--repeats`` runs after one warm-up run. The script also reports whether both
produced the same tokens, and, at batch 1, each side's share of the memory-bandwidth bound:
a decode step must read every weight and the KV cache once, so tokens/s cannot exceed the
machine's measured copy bandwidth (bytes copied per second, measured first) divided by
those bytes. Results also go to ``benchmarks/results/generate.json``.

``--dtypes`` times each precision of the weights (``attnkit sample --dtype``), the reference
loaded in the same precision, on the same (rounded) weights. Half-precision rows also give the
ratio to the reference in fp32, its default. By default bf16 is timed where the hardware
multiplies bf16 natively (CUDA, or a CPU with AVX512-BF16/AMX) and fp32 everywhere. Both sides
run in this process with the allocator settings ``attnkit sample`` makes (freed memory kept
for reuse, and transparent huge pages behind large tensors: :mod:`attnkit.runtime`);
``--malloc default`` keeps glibc's and PyTorch's defaults for both.

    python benchmarks/generate.py [--sizes tiny gpt2-124m] [--tokens 32] [--batches 1 8]
                                  [--dtypes fp32 bf16] [--compile]
"""

import argparse
import copy
import sys
import time

from attnkit.runtime import huge_pages

# as `attnkit sample` does, before torch loads (so for both sides); not with --malloc default
HUGE_PAGES = "default" not in sys.argv and huge_pages()

import torch  # noqa: E402
from reference import add_malloc_option, apply_malloc, hf_twin, write_results  # noqa: E402

from attnkit.backends import accelerate  # noqa: E402
from attnkit.config import ModelConfig, expand_presets  # noqa: E402
from attnkit.devices import cpu_has_native_bf16, resolve_dtype  # noqa: E402
from attnkit.generate import generate_batch_ids, generate_ids  # noqa: E402
from attnkit.models import Decoder  # noqa: E402

VOCAB = 50257  # GPT-2's vocabulary; --vocab-size 256 gives a byte-level model


def attnkit_generate(model: Decoder, prompts: list[list[int]], n: int, compile: bool = False,
                     temperature: float = 0.0) -> list[list[int]]:
    kw = {"temperature": temperature, "seed": 0 if temperature else None}
    if len(prompts) == 1:
        return [list(generate_ids(model, prompts[0], n, compile=compile, **kw))]
    return generate_batch_ids(model, prompts, n, **kw)


@torch.inference_mode()
def hf_generate(hf, prompts: list[list[int]], n: int, temperature: float = 0.0
                ) -> list[list[int]]:
    ids = torch.tensor(prompts, device=hf.device)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} \
        if temperature else {"do_sample": False}
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                      min_new_tokens=n, pad_token_id=0, **sampling)
    return out[:, ids.shape[1]:].tolist()


def timed(repeats: int, fn, *args) -> tuple[float, list[list[int]]]:
    """The best wall time of ``repeats`` runs, and the result."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, result


def copy_bandwidth(device: torch.device, mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second that ``Tensor.copy_`` moves through ``device``'s memory (best of
    ``repeats``)."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)

    def copy() -> None:
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    copy()
    best = min(timed(1, copy)[0] for _ in range(repeats))
    return src.numel() * 4 / best


def bound_tokens_per_s(model: Decoder, prompt_len: int, new: int, bandwidth: float) -> float:
    """Batch-1 decode ceiling: weights plus the average KV cache read once per token."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.cfg
    size = next(model.parameters()).element_size()
    per_token_cache = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_size * size  # k and v
    cache = per_token_cache * (prompt_len + new / 2)
    return bandwidth / (weights + cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "gpt2-124m"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="best of N timed runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--vocab-size", type=int, default=VOCAB,
                        help="vocabulary (default GPT-2's 50257; 256 = a byte-level model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--backend", default="auto", choices=["auto", "plain", "onednn"],
                        help="attnkit's back-end (attnkit.backends.accelerate); plain: as written")
    parser.add_argument("--dtypes", nargs="+", default=None,
                        help="precisions of the weights: fp32, bf16, fp16 (default fp32, plus bf16 "
                             "on CUDA or a CPU with native bf16)")
    add_malloc_option(parser)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy (default; both sides must give the same tokens); above "
                             "0 both sides sample from the whole softmax at this temperature")
    parser.add_argument("--compile", action="store_true",
                        help="also time attnkit's compiled decode step at batch 1 "
                             "(attnkit sample --compile); the compilation is reported apart")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = apply_malloc(args.malloc)
    device = torch.device(args.device)
    dtypes = args.dtypes or (["fp32", "bf16"] if device.type == "cuda" or cpu_has_native_bf16()
                             else ["fp32"])
    bandwidth = copy_bandwidth(device)
    T = args.temperature

    def ours_of(model, prompts, n, compile=False):
        return attnkit_generate(model, prompts, n, compile, T)

    def theirs_of(hf, prompts, n):
        return hf_generate(hf, prompts, n, T)

    def same(a, b) -> str:  # sampled tokens come from two different random streams
        return "-" if T else "yes" if a == b else "no"

    mode = f"sampled at temperature {T:g}" if T else "greedy"
    print(f"{mode}, {args.tokens} new tokens per row after a {args.prompt_len}-token prompt, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s, "
          f"{'freed memory kept' if kept else 'default malloc'}"
          f"{', huge pages' if HUGE_PAGES else ''}")
    print(f"{'model':<12} {'dtype':>5} {'batch':>5} {'attnkit tok/s':>14} {'HF tok/s':>10} "
          f"{'ratio':>7}  same  {'bound tok/s':>11} {'attnkit':>8} {'HF':>6}  vs HF fp32")
    rows = []
    for size in args.sizes:
        torch.manual_seed(0)
        cfg = ModelConfig(**expand_presets({"size": size, "style": "gpt2", "vocab_size": args.vocab_size}))
        model32 = Decoder(cfg).eval()
        hf32 = hf_twin(model32).eval()
        hf_fp32_speed = {}  # batch -> the reference's tokens/s in fp32
        for name in dtypes:
            dtype = resolve_dtype(name, "--dtypes")
            model = accelerate(copy.deepcopy(model32).to(device, dtype), purpose="decode",
                               backend=args.backend)
            hf = copy.deepcopy(hf32).to(device, dtype)
            for batch in args.batches:
                prompts = torch.randint(0, args.vocab_size, (batch, args.prompt_len)).tolist()
                ours_of(model, prompts, args.tokens)  # warm up
                theirs_of(hf, prompts, args.tokens)
                t_ours, ours = timed(args.repeats, ours_of, model, prompts, args.tokens)
                t_hf, ref = timed(args.repeats, theirs_of, hf, prompts, args.tokens)
                n = batch * args.tokens
                if dtype == torch.float32:
                    hf_fp32_speed[batch] = n / t_hf
                row = {"size": size, "dtype": name, "vocab_size": args.vocab_size, "batch": batch,
                       "new_tokens": args.tokens, "attnkit_tokens_per_s": round(n / t_ours, 1),
                       "hf_tokens_per_s": round(n / t_hf, 1), "ratio": round(t_hf / t_ours, 3),
                       "same_tokens": None if T else ours == ref}
                line = (f"{size:<12} {name:>5} {batch:>5} {n / t_ours:>14.1f} {n / t_hf:>10.1f} "
                        f"{t_hf / t_ours:>6.2f}x  {same(ours, ref):<4}")
                if batch == 1:
                    bound = bound_tokens_per_s(model, args.prompt_len, args.tokens, bandwidth)
                    row["bound_tokens_per_s"] = round(bound, 1)
                    line += f" {bound:>11.1f} {n / t_ours / bound:>7.0%} {n / t_hf / bound:>6.0%}"
                else:
                    line += f" {'':>11} {'':>8} {'':>6}"
                if dtype != torch.float32 and batch in hf_fp32_speed:
                    row["ratio_to_hf_fp32"] = round(n / t_ours / hf_fp32_speed[batch], 3)
                    line += f"  {row['ratio_to_hf_fp32']:>8.2f}x"
                if args.compile and batch == 1:
                    t0 = time.perf_counter()
                    first = ours_of(model, prompts, args.tokens, True)
                    warm = time.perf_counter() - t0
                    t_comp, comp = timed(args.repeats, ours_of, model, prompts, args.tokens, True)
                    row.update({"compiled_tokens_per_s": round(n / t_comp, 1),
                                "compiled_ratio": round(t_hf / t_comp, 3),
                                "compiled_same_tokens": None if T else comp == ref == first,
                                "compile_s": round(warm, 1)})
                    line += (f"\n{'':<12} {'':>5} {'':>5} {n / t_comp:>14.1f} {'':>10} "
                             f"{t_hf / t_comp:>6.2f}x  {same(comp, ref):<4} "
                             f"compiled decode step (first call {warm:.1f} s)")
                print(line, flush=True)
                rows.append(row)
    write_results("generate", device, kept, {
        "temperature": T, "copy_bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "cpu_native_bf16": cpu_has_native_bf16(), "malloc_kept": kept,
        "huge_pages": HUGE_PAGES, "rows": rows}, tags=("sampled",) if T else ())


if __name__ == "__main__":
    main()
