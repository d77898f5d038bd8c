"""``attnkit embed``: sentence embeddings from an encoder run or a Hugging Face BERT folder.

Each text is framed like BERT's inputs (``[CLS] ... [SEP]``), run through the
encoder, and its last hidden states are averaged over the real tokens - the mean
pooling of sentence-transformers, computed by :func:`attnkit.generate.embed.embed_texts`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnkit.errors import AttnkitError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "embed", help="sentence embeddings from an encoder run or a Hugging Face BERT folder",
        description="Print the mean-pooled sentence embedding of each --text: a summary line "
                    "each, or with --json exactly one JSON list of lists of floats.",
        epilog="examples:\n"
               "  attnkit embed runs/encoder-mlm --text \"a sentence\" --text \"another\"\n"
               "  attnkit embed path/to/all-MiniLM-L6-v2 --text \"a sentence\" --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="an encoder run directory, or a Hugging Face BERT "
                   "folder (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--text", action="append", required=True, metavar="TEXT",
                   help="a text to embed; repeat for several")
    p.add_argument("--json", action="store_true",
                   help="print only a JSON list with one list of floats per --text")
    p.add_argument("--normalize", action="store_true",
                   help="scale each embedding to unit length (cosine similarity = dot product)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (32)")
    p.add_argument("--device", default="cpu", help="cpu | auto | cuda | mps (default cpu)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def load_encoder(path: Path, device: str = "cpu"):
    """The :class:`~attnkit.interop.loaded.Loaded` run of an encoder that has a tokenizer,
    through :func:`attnkit.load` (which sends a Hugging Face BERT folder to the BERT importer)."""
    import attnkit

    loaded = attnkit.load(path, device)
    if not loaded.model.abilities.embeds:
        raise AttnkitError(f"{path} holds a {loaded.model.cfg.family} model, and embeddings come "
                           f"from an encoder (train one with `attnkit train encoder-mlm`, or "
                           f"point at a Hugging Face BERT folder)")
    if loaded.tokenizer is None:
        raise AttnkitError(f"{path} has no tokenizer.json (put the model's tokenizer.json in the "
                           f"folder)")
    return loaded


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (see `attnkit embed "
                           f"--help`)")
    if args.batch_size < 1:
        raise AttnkitError("--batch-size must be at least 1")
    from attnkit.generate.embed import embed_texts

    loaded = load_encoder(args.run, args.device)

    def note(i: int, limit: int) -> None:
        print(f"note: text {i + 1} was cut to the model's {limit} tokens", file=sys.stderr)

    vectors, lengths = embed_texts(loaded.model, args.text, tokenizer=loaded.tokenizer,
                                   batch_size=args.batch_size, normalize=args.normalize,
                                   on_truncate=note)
    if args.json:
        print(json.dumps(vectors.tolist()))
        return 0
    for i, (text, v, n) in enumerate(zip(args.text, vectors, lengths)):
        shown = text if len(text) <= 40 else text[:37] + "..."
        first = ", ".join(f"{x:+.4f}" for x in v[:4].tolist())
        print(f"[{i + 1}] {shown!r}: {n} tokens -> dim {v.numel()}, norm {v.norm():.4f}, "
              f"[{first}, ...]")
    return 0
