"""``attnkit eval RUN``: exact match, BLEU and chrF of a seq2seq run on a split of its data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attnkit.commands.translate import add_decoding_args, check_decoding_args, load_seq2seq
from attnkit.errors import AttnkitError

BLEU_TOKENIZERS = ("auto", "13a", "char", "intl", "none")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a seq2seq run: exact match, BLEU and chrF on a data split",
        description="Decode every source of a split (test by default) of the run's data, or "
                    "of --data, and score the outputs against the targets: exact match, BLEU "
                    "and chrF (sacrebleu).",
        epilog="examples:\n"
               "  attnkit eval runs/seq2seq-reverse\n"
               "  attnkit eval runs/seq2seq-reverse --split valid --beam 4 --json\n"
               "  attnkit eval runs/my-run --data pairs/ --split test\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a seq2seq run directory")
    p.add_argument("--split", default="test", help="train | valid | test (default test)")
    p.add_argument("--data", metavar="PATH",
                   help="parallel data to score instead of the run's data.path (a .tsv or "
                        ".jsonl file, a folder, or synthetic:NAME)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="score only the first N pairs of the split")
    p.add_argument("--bleu-tokenize", default="auto", choices=BLEU_TOKENIZERS,
                   help="sacrebleu tokenizer; auto: 13a, or char when no target has a space "
                        "(default auto)")
    add_decoding_args(p)
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise AttnkitError("BLEU and chrF need sacrebleu, which is not installed "
                           "(pip install sacrebleu)") from None
    return sacrebleu


def score(outputs: list[str], targets: list[str], bleu_tokenize: str = "auto") -> dict[str, float | str]:
    """Exact match (a fraction), corpus BLEU and chrF (0-100, sacrebleu) of ``outputs``."""
    sacrebleu = _sacrebleu()
    if bleu_tokenize == "auto":
        bleu_tokenize = "13a" if any(" " in t for t in targets) else "char"
    exact = sum(o == t for o, t in zip(outputs, targets)) / max(len(targets), 1)
    bleu = sacrebleu.corpus_bleu(outputs, [targets], tokenize=bleu_tokenize).score
    chrf = sacrebleu.corpus_chrf(outputs, [targets]).score
    return {"exact_match": exact, "bleu": bleu, "chrf": chrf, "bleu_tokenize": bleu_tokenize}


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (see `attnkit eval --help`)")
    check_decoding_args(args)
    if args.limit is not None and args.limit < 1:
        raise AttnkitError(f"--limit must be at least 1, got {args.limit}")
    _sacrebleu()  # fail before the slow part
    from attnkit.data.pairs import load_parallel, special_ids, split_name
    from attnkit.generate.beam import translate_ids

    split = split_name(args.split)
    run = load_seq2seq(args.run, args.device, "eval", args.backend)
    model, cfg, tokenizer = run.model, run.config, run.tokenizer
    spec = args.data or cfg.data.path
    pairs = load_parallel(spec, cfg.data.val_fraction).split(split)[:args.limit]
    pad_id, bos_id, eos_id = special_ids(tokenizer)
    sources = []
    for i, (source, _) in enumerate(pairs, start=1):
        try:
            sources.append(tokenizer.encode(source) + [eos_id])
        except AttnkitError as e:
            raise AttnkitError(f"{spec} ({split} pair {i}): {e}") from None
    ids = translate_ids(model, sources, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id,
                        beam_size=args.beam, length_penalty=args.length_penalty,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    outputs = [tokenizer.decode(row) for row in ids]
    scores = score(outputs, [t for _, t in pairs], args.bleu_tokenize)
    decoding = ("greedy" if args.beam == 1
                else f"beam {args.beam}, length penalty {args.length_penalty:g}")
    if args.json:
        print(json.dumps({"run": str(args.run), "data": spec, "split": split, "pairs": len(pairs),
                          "beam": args.beam, "length_penalty": args.length_penalty,
                          **{k: round(v, 4) if isinstance(v, float) else v
                             for k, v in scores.items()}}))
        return 0
    print(f"run       {args.run}")
    print(f"data      {spec}, {split} split, {len(pairs):,} pairs")
    print(f"decoding  {decoding}")
    print(f"exact match  {100 * scores['exact_match']:6.2f}%")
    print(f"BLEU         {scores['bleu']:6.2f}   ({scores['bleu_tokenize']} tokens)")
    print(f"chrF         {scores['chrf']:6.2f}")
    return 0
