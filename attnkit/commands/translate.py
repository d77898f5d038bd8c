"""``attnkit translate RUN --text ...``: outputs of a trained encoder-decoder, one per line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnkit.commands import add_backend_argument
from attnkit.errors import AttnkitError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "translate", help="translate text with a trained encoder-decoder (seq2seq) run",
        description="Decode each source with a seq2seq run and print one output per line: "
                    "greedy by default, beam search with --beam N.",
        epilog="examples:\n"
               "  attnkit translate runs/seq2seq-reverse --text abc --text hello\n"
               "  attnkit translate runs/seq2seq-reverse --input sources.txt --beam 4\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a seq2seq run directory, e.g. runs/seq2seq-reverse")
    p.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="a source to translate (repeat for several)")
    p.add_argument("--input", type=Path, metavar="FILE",
                   help="a UTF-8 file with one source per line ('-' reads stdin)")
    add_decoding_args(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def add_decoding_args(p: argparse.ArgumentParser) -> None:
    """Options shared with ``attnkit eval``."""
    p.add_argument("--beam", type=int, default=1, metavar="N",
                   help="beam size; 1 is greedy decoding (default 1)")
    p.add_argument("--length-penalty", type=float, default=0.6, metavar="ALPHA",
                   help="GNMT length penalty ((5+len)/6)^alpha for beam search; 0 turns it "
                        "off (default 0.6)")
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="longest output in tokens (default: the model's context length)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="sources decoded together (default 64)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    add_backend_argument(p)


def load_seq2seq(run_dir: Path, device: str, command: str, backend: str = "auto"):
    """``attnkit.load(run_dir)`` (a :class:`~attnkit.Loaded` whose model is accelerated for
    decoding by ``backend``), refusing models that do not translate with the command to use."""
    import attnkit
    from attnkit.backends import accelerate

    if not Path(run_dir).exists():  # a file in the way is named by attnkit.load
        raise AttnkitError(f"run directory not found: {run_dir} (train one with `attnkit train "
                           f"seq2seq-reverse`)")
    run = attnkit.load(run_dir, device=device)
    model = run.model
    if not model.abilities.translates:
        family = model.cfg.family  # named in the message, never branched on
        if model.abilities.generates:
            raise AttnkitError(f"{run_dir} is a {family} model; use attnkit sample (attnkit "
                               f"{command} needs a seq2seq run)")
        raise AttnkitError(f"{run_dir} is an {family} model; attnkit {command} needs a seq2seq "
                           f"run (train one with `attnkit train seq2seq-reverse`)")
    if run.tokenizer is None:  # converted from a Hugging Face folder without one
        raise AttnkitError(f"{run_dir} has no tokenizer.json, so text cannot be encoded (add the "
                           f"model's tokenizer.json to the directory)")
    accelerate(model, purpose="decode", backend=backend)
    return run


def check_decoding_args(args: argparse.Namespace) -> None:
    if args.beam < 1:
        raise AttnkitError(f"--beam must be at least 1, got {args.beam}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise AttnkitError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        raise AttnkitError(f"--batch-size must be at least 1, got {args.batch_size}")


def read_sources(path: Path) -> list[str]:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AttnkitError(f"input file not found: {path} (give a file with one source per "
                           f"line)") from None
    except UnicodeDecodeError:
        raise AttnkitError(f"{path} is not UTF-8 text (save it as UTF-8)") from None
    except OSError as e:
        raise AttnkitError(f"cannot read {path}: {e.strerror or e}") from None
    return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (see `attnkit translate "
                           f"--help`)")
    check_decoding_args(args)
    texts = list(args.text) + (read_sources(args.input) if args.input else [])
    if not texts:
        raise AttnkitError("nothing to translate (give --text TEXT, repeatable, or --input FILE "
                           "with one source per line)")
    from attnkit.generate.beam import translate

    run = load_seq2seq(args.run, args.device, "translate", args.backend)
    outputs = translate(run.model, texts, tokenizer=run.tokenizer, token_ids=run.token_ids,
                        beam_size=args.beam, length_penalty=args.length_penalty,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    for line in outputs:
        print(line)
    return 0
