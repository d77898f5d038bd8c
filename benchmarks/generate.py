"""Greedy generation speed: attnkit against Hugging Face ``transformers`` ``generate()`` on the
very same weights (exported with ``attnkit.interop.to_hf``), at batch 1 and batch 8.

Each row generates ``--tokens`` new tokens after a short random prompt (all prompts of one
length, so neither side pads); tokens/s counts new tokens over all rows, prefill included,
best of ``--repeats`` runs after one warm-up run. The script also reports whether both
produced the same tokens.

    python benchmarks/generate.py [--sizes tiny gpt2-124m] [--tokens 32] [--batches 1 8]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from attnkit.config import ModelConfig, expand_presets
from attnkit.generate import generate_batch_ids, generate_ids
from attnkit.interop import to_hf
from attnkit.models import Decoder

VOCAB = 50257  # GPT-2's vocabulary; --vocab-size 256 gives a byte-level model


def attnkit_generate(model: Decoder, prompts: list[list[int]], n: int) -> list[list[int]]:
    if len(prompts) == 1:
        return [list(generate_ids(model, prompts[0], n, temperature=0))]
    return generate_batch_ids(model, prompts, n, temperature=0)


@torch.inference_mode()
def hf_generate(hf, prompts: list[list[int]], n: int) -> list[list[int]]:
    ids = torch.tensor(prompts)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                      min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[:, ids.shape[1]:].tolist()


def timed(repeats: int, fn, *args) -> tuple[float, list[list[int]]]:
    """The best wall time of ``repeats`` runs, and the result."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, result


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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    print(f"greedy, {args.tokens} new tokens per row after a {args.prompt_len}-token prompt, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'model':<12} {'batch':>5} {'attnkit tok/s':>14} {'HF tok/s':>10} {'ratio':>7}  same")
    for size in args.sizes:
        torch.manual_seed(0)
        cfg = ModelConfig(**expand_presets({"size": size, "style": "gpt2", "vocab_size": args.vocab_size}))
        model = Decoder(cfg).eval()
        with tempfile.TemporaryDirectory() as tmp:
            to_hf(model, Path(tmp) / "hf")
            hf = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf").eval()
        for batch in args.batches:
            prompts = torch.randint(0, args.vocab_size, (batch, args.prompt_len)).tolist()
            attnkit_generate(model, prompts, args.tokens)  # warm up
            hf_generate(hf, prompts, args.tokens)
            t_ours, ours = timed(args.repeats, attnkit_generate, model, prompts, args.tokens)
            t_hf, ref = timed(args.repeats, hf_generate, hf, prompts, args.tokens)
            n = batch * args.tokens
            print(f"{size:<12} {batch:>5} {n / t_ours:>14.1f} {n / t_hf:>10.1f} "
                  f"{t_hf / t_ours:>6.2f}x  {'yes' if ours == ref else 'no'}")


if __name__ == "__main__":
    main()
