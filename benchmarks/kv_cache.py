"""Generation speed with the KV cache against recomputing the whole prefix every token.

The reference is nanoGPT-style decoding (no cache: a full forward over the
sequence for every new token), run side by side in the same process on the same
model, prompt and greedy tokens; the script checks both produce the same tokens.

    python benchmarks/kv_cache.py [--size mini] [--tokens 256]
"""

import argparse
import time

import torch

from attnkit.backends import accelerate
from attnkit.config import ModelConfig, expand_presets
from attnkit.generate import generate_ids
from attnkit.models import Decoder


@torch.inference_mode()
def uncached(model: Decoder, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = []
    for _ in range(n):
        logits, _ = model(ids[:, -model.cfg.context_length:])
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(int(nxt))
        ids = torch.cat([ids, nxt], dim=1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini")
    parser.add_argument("--style", default="gpt2")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--prompt-len", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(**expand_presets({"size": args.size, "style": args.style, "vocab_size": 256}))
    model = accelerate(Decoder(cfg).eval(), purpose="decode")  # as attnkit sample does
    prompt = torch.randint(0, 256, (args.prompt_len,)).tolist()
    n = min(args.tokens, cfg.context_length - args.prompt_len)
    print(f"model {args.style}/{args.size} ({model.num_params() / 1e6:.1f}M params), "
          f"{n} greedy tokens after a {args.prompt_len}-token prompt, "
          f"{torch.get_num_threads()} threads")
    uncached(model, prompt, 4), list(generate_ids(model, prompt, 4, temperature=0))  # warm up
    t0 = time.perf_counter()
    ref = uncached(model, prompt, n)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = list(generate_ids(model, prompt, n, temperature=0))
    t_ours = time.perf_counter() - t0
    assert ours == ref, "cached and uncached greedy decoding disagree"
    print(f"no cache (reference)  {n / t_ref:8.1f} tokens/s")
    print(f"attnkit KV cache      {n / t_ours:8.1f} tokens/s")
    print(f"speed-up              {t_ref / t_ours:8.2f}x (same tokens)")


if __name__ == "__main__":
    main()
