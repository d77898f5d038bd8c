"""Peak memory of training: attnkit against Hugging Face ``GPT2LMHeadModel``, with and
without activation checkpointing, and how attention memory grows with the context.

Each measurement runs in a fresh process (this script re-invoked with ``--child``), which
builds the model and optimizer, records its resident memory, runs one training step
(forward, backward, AdamW), and reports the peak resident memory of the whole step and the
growth during forward + backward over the state it started from ("step MB": activations
and gradients, which is what activation checkpointing and the attention kernel change;
AdamW's moments, twice the weights, come after, in the optimizer step).

1. gpt2-124m at context 1024 (batch 1): attnkit and the reference, each with and without
   activation checkpointing (``--train.activation_checkpointing`` / HF
   ``gradient_checkpointing_enable()``).
2. One attention-heavy layer stack at contexts 1024 .. 8192: the fused kernel (SDPA) against
   the eager softmax(QK^T)V, whose (T x T) attention matrix grows quadratically.

Results go to ``benchmarks/results/memory.json``.

    python benchmarks/memory.py [--contexts 1024 2048 4096 8192] [--skip-gpt2]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from reference import RESULTS


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(spec: dict) -> dict:
    """One measurement, in this (fresh) process."""
    from attnkit.backends import accelerate
    from attnkit.config import ModelConfig, TrainConfig, expand_presets
    from attnkit.models import Decoder
    from attnkit.train.distributed import checkpoint_blocks
    from attnkit.train.optim import build_optimizer

    torch.manual_seed(0)
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    cfg = ModelConfig(**expand_presets(spec["model"]))
    model = Decoder(cfg).train()
    ctx = cfg.context_length
    x = torch.randint(0, cfg.vocab_size, (spec.get("batch", 1), ctx + 1))
    if spec["impl"] == "hf":
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging

        from attnkit.interop import to_hf

        logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as tmp:  # not reference.hf_twin: the attnkit copy
            to_hf(model, Path(tmp) / "hf")         # must be freed before loading, or the peak
            del model                              # would count both models at once
            model = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf").train()
        if spec.get("checkpointing"):
            model.gradient_checkpointing_enable()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def loss_of():
            return model(input_ids=x[:, :-1], labels=x[:, :-1]).loss
    else:
        if spec.get("checkpointing"):
            checkpoint_blocks(model)
        opt = build_optimizer(model, TrainConfig(), "cpu")

        accelerate(model, purpose="train")  # as the trainer: the fused output layer + loss

        def loss_of():  # in training mode the accelerated model returns no logits
            return model(x[:, :-1], x[:, 1:])[1]
    before = rss_mb()
    loss = loss_of()
    loss.backward()
    backward_peak = peak_mb()  # activations and gradients: what checkpointing changes
    opt.step()  # AdamW allocates its two moments (2 x the weights) here
    return {**spec, "rss_before_mb": round(before, 1), "peak_mb": round(peak_mb(), 1),
            "step_mb": round(backward_peak - before, 1), "loss": round(loss.item(), 4)}


def measure(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--contexts", nargs="+", type=int, default=[1024, 2048, 4096, 8192])
    parser.add_argument("--skip-gpt2", action="store_true", help="only the context sweep")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows = {"gpt2_124m": [], "context": []}
    if not args.skip_gpt2:
        print("gpt2-124m, context 1024, batch 1: peak resident memory of one training step")
        print(f"{'implementation':<16} {'checkpointing':>13} {'peak MB':>9} {'fwd+bwd MB':>11}")
        gpt2 = {"size": "gpt2-124m", "style": "gpt2", "vocab_size": 50257, "dropout": 0.0}
        for impl in ("attnkit", "hf"):
            for ckpt in (False, True):
                r = measure({"impl": impl, "checkpointing": ckpt, "model": gpt2,
                             "threads": args.threads})
                rows["gpt2_124m"].append(r)
                name = "attnkit" if impl == "attnkit" else "transformers"
                print(f"{name:<16} {'on' if ckpt else 'off':>13} {r['peak_mb']:>9.0f} "
                      f"{r['step_mb']:>11.0f}", flush=True)
    print("\nattention memory vs context (4 layers, d_model 256, 4 heads, batch 1): fwd+bwd MB")
    print(f"{'context':>8} {'fused (sdpa)':>13} {'eager':>9} {'eager/fused':>12}")
    for ctx in args.contexts:
        small = {"style": "gpt2", "n_layers": 4, "n_heads": 4, "d_model": 256, "vocab_size": 256,
                 "context_length": ctx, "dropout": 0.0}
        fused = measure({"impl": "attnkit", "model": {**small, "attention": "sdpa"},
                         "threads": args.threads})
        eager = measure({"impl": "attnkit", "model": {**small, "attention": "eager"},
                         "threads": args.threads})
        rows["context"].append({"context": ctx, "fused_step_mb": fused["step_mb"],
                                "eager_step_mb": eager["step_mb"]})
        print(f"{ctx:>8} {fused['step_mb']:>13.0f} {eager['step_mb']:>9.0f} "
              f"{eager['step_mb'] / max(fused['step_mb'], 1e-9):>11.1f}x", flush=True)
    out = RESULTS / "memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, **rows}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
