"""``attnkit embed``: sentence embeddings from an encoder run or a Hugging Face BERT folder.

Each text is framed like BERT's inputs (``[CLS] ... [SEP]``), run through the
encoder, and its last hidden states are averaged over the real tokens - the mean
pooling of sentence-transformers.
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
    """An encoder with its tokenizer, through :func:`attnkit.load` (which sends a Hugging Face
    BERT folder to the BERT importer)."""
    import attnkit

    model = attnkit.load(path, device)
    if not hasattr(model, "embed"):
        family = getattr(getattr(model, "cfg", None), "family", type(model).__name__)
        raise AttnkitError(f"{path} holds a {family} model, and embeddings come from an encoder "
                           f"(train one with `attnkit train encoder-mlm`, or point at a Hugging "
                           f"Face BERT folder)")
    if getattr(model, "tokenizer", None) is None:
        raise AttnkitError(f"{path} has no tokenizer.json (put the model's tokenizer.json in the "
                           f"folder)")
    return model


def embed_texts(model, texts: list[str], batch_size: int = 32, normalize: bool = False,
                on_truncate=None):
    """Embeddings (N, C) of ``texts`` as a float tensor on the CPU."""
    import torch

    from attnkit.data.labeled import encode_text, pad_batch

    tok = model.tokenizer
    limit = model.cfg.context_length
    pad_id = tok.special_tokens.get("pad", 0)
    device = next(model.parameters()).device
    seqs = []
    for i, text in enumerate(texts):
        ids = encode_text(tok, text, limit)
        if on_truncate is not None and len(ids) == limit and \
                len(encode_text(tok, text, limit + 1)) > limit:
            on_truncate(i, limit)
        seqs.append(ids)
    out = []
    with torch.no_grad():
        for start in range(0, len(seqs), batch_size):
            ids, mask = pad_batch(seqs[start:start + batch_size], pad_id, device)
            out.append(model.embed(ids, mask, normalize=normalize).float().cpu())
    return torch.cat(out), [len(s) for s in seqs]


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (see `attnkit embed "
                           f"--help`)")
    if args.batch_size < 1:
        raise AttnkitError("--batch-size must be at least 1")
    model = load_encoder(args.run, args.device)

    def note(i: int, limit: int) -> None:
        print(f"note: text {i + 1} was cut to the model's {limit} tokens", file=sys.stderr)

    vectors, lengths = embed_texts(model, args.text, args.batch_size, args.normalize, note)
    if args.json:
        print(json.dumps(vectors.tolist()))
        return 0
    for i, (text, v, n) in enumerate(zip(args.text, vectors, lengths)):
        shown = text if len(text) <= 40 else text[:37] + "..."
        first = ", ".join(f"{x:+.4f}" for x in v[:4].tolist())
        print(f"[{i + 1}] {shown!r}: {n} tokens -> dim {v.numel()}, norm {v.norm():.4f}, "
              f"[{first}, ...]")
    return 0
