"""``attnkit convert``: Hugging Face GPT-2 / Llama (and BERT, BART, ViT) folders <-> attnkit run
directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from attnkit.errors import AttnkitError

USAGE = "attnkit convert --from-hf DIR --out RUN  |  attnkit convert RUN --to-hf DIR"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert Hugging Face GPT-2, Llama, BERT, BART and ViT checkpoints to attnkit runs "
             "and back",
        usage=USAGE,
        description="Import a Hugging Face model folder (config.json + model.safetensors, "
                    "GPT-2, Llama, BERT, BART or ViT) as an attnkit run directory, or export a "
                    "run's latest checkpoint as a folder transformers' from_pretrained loads. "
                    "The output folder must not exist (or be empty); it appears only when "
                    "complete.",
        epilog="examples:\n"
               "  attnkit convert --from-hf ~/models/gpt2 --out runs/gpt2\n"
               "  attnkit sample runs/gpt2 --prompt 'Hello' --temperature 0\n"
               "  attnkit convert runs/pydoc-char --to-hf exported/pydoc-char\n"
               "(attnkit.load and attnkit sample also read a Hugging Face folder directly)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", type=Path, help="the attnkit run to export (with --to-hf)")
    p.add_argument("--from-hf", type=Path, metavar="DIR",
                   help="a Hugging Face model folder to import")
    p.add_argument("--out", type=Path, metavar="RUN", help="the run directory to create (with "
                   "--from-hf)")
    p.add_argument("--to-hf", type=Path, metavar="DIR", help="the Hugging Face folder to create")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (usage: {USAGE})")
    from attnkit.interop import convert_from_hf, convert_to_hf

    if args.from_hf is not None:
        if args.to_hf is not None or args.run is not None or args.out is None:
            raise AttnkitError(f"--from-hf DIR needs --out RUN and nothing else (usage: {USAGE})")
        run = convert_from_hf(args.from_hf, args.out)
        tok = run.tokenizer
        note = f", {tok.kind} tokenizer" if tok is not None else ", no tokenizer"
        print(f"converted {args.from_hf} ({_describe(run.model)}){note} -> {args.out}")
        ids = run.token_ids
        if ids is not None:  # BART: the ids of its config.json, kept in token_ids.json
            print("token ids kept from config.json: " +
                  ", ".join(f"{k} {v}" for k, v in ids.items() if v is not None))
        if tok is None and run.config.data.task != "image":  # images need no tokenizer
            print(f"no tokenizer.json in {args.from_hf}: the run works on token ids only "
                  f"(attnkit.load and decoding from ids work; commands that take text need the "
                  f"model's tokenizer.json copied into {args.out})")
        return 0
    if args.to_hf is not None:
        if args.run is None or args.out is not None:
            raise AttnkitError(f"--to-hf DIR needs the run to export before it (usage: {USAGE})")
        run = convert_to_hf(args.run, args.to_hf)
        tok = run.tokenizer
        note = "" if tok is None or tok.kind in ("hf", "gpt2", "bpe") else \
            f" (the {tok.kind} tokenizer has no Hugging Face form: no tokenizer.json written)"
        print(f"exported {args.run} ({_describe(run.model)}) -> {args.to_hf}{note}")
        return 0
    raise AttnkitError(f"say which way to convert (usage: {USAGE})")


def _describe(model) -> str:
    cfg = model.cfg
    n = sum(p.numel() for p in model.parameters()) / 1e6
    layers = (f"{cfg.n_layers} layers" if hasattr(cfg, "n_layers") else  # seq2seq: two stacks
              f"{cfg.n_encoder_layers}+{cfg.n_decoder_layers} layers")
    return (f"{getattr(cfg, 'family', 'decoder')}, {n:.2f}M parameters, {layers}, "
            f"d_model {cfg.d_model}, {cfg.n_heads} heads")
