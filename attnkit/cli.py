"""The ``attnkit`` command: one function per subcommand, looked up in :data:`COMMANDS`.

Every error a user can cause is an :class:`AttnkitError`; it is printed as one
line on stderr with exit code 2 and no traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from attnkit.commands import add_backend_argument
from attnkit.config import FAMILY_CONFIGS, SECTIONS, list_recipes
from attnkit.errors import AttnkitError

DEFAULT_RUN_NAME = "pydoc-char"
SAMPLE_TEMPERATURE = 0.8  # `attnkit sample`'s default --temperature


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def run_path(text: str) -> Path:
    """A run folder given on the command line; an empty string would mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a folder name, got an empty string "
                                         "(e.g. runs/mine)")
    return Path(text)


def _override_help() -> str:
    import dataclasses
    import textwrap

    lines = ["config overrides (--section.key=value; defaults shown):"]
    sections = [(f"--model.* ({fam})", c) for fam, c in FAMILY_CONFIGS.items()]
    sections += [(f"--{s}.*", c) for s, c in SECTIONS.items() if s != "model"]
    for section, cls in sections:
        fields = [f"{f.name}={_default(f)}" for f in dataclasses.fields(cls)]
        first = f"  {section}  "
        lines += textwrap.wrap(", ".join(fields), width=94, initial_indent=first,
                               subsequent_indent=" " * len(first))
    lines += [
        "",
        "  model.family: decoder | seq2seq | encoder | lstm   (data.task follows it: lm | seq2seq |",
        "                mlm or classify | lm)",
        "  model.style: gpt2 | llama | original     model.size: tiny | mini | small | medium | "
        "gpt2-124m",
        "  model.norm: layernorm | rmsnorm   model.norm_position: pre | post",
        "  model.ffn: gelu | gelu_tanh | relu | swiglu | geglu",
        "  model.pos: learned | sinusoidal | rope | alibi | none",
        "  data.path: pydoc (built in) | FILE | FOLDER | synthetic:reverse|sort|add (seq2seq)",
        "  data.tokenizer: char | byte | bpe | gpt2 | PATH/tokenizer.json",
        "",
        f"recipes: {', '.join(list_recipes()) or '(none found)'}",
        "",
        "examples:",
        "  attnkit train                                   # built-in corpus, ~5 min on 2 CPU cores",
        "  attnkit train shakespeare-char --data.path=input.txt --out runs/shakespeare",
        "  attnkit train --model.style=llama --model.size=tiny --train.steps=500",
        "  attnkit train --resume runs/pydoc-char --train.steps=3000",
    ]
    return "\n".join(lines)


def _default(f) -> str:
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return "none" if f.default is None else str(f.default)
    return "?"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attnkit", description="Train, sample and study Transformers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    train = sub.add_parser(
        "train", help="train a model from a recipe and overrides",
        description="Train a decoder-only Transformer. With no arguments: a character-level "
                    "model on the built-in corpus (the Python docs shipped with CPython), "
                    "saved under runs/pydoc-char.",
        epilog=_override_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("recipe", nargs="?", help="a recipe name from recipes/ or a path to a "
                       "YAML file (default: the built-in defaults)")
    train.add_argument("--out", type=run_path, help="run directory (default: runs/<recipe>, with "
                       "a numeric suffix if it exists)")
    train.add_argument("--resume", type=run_path, metavar="RUN",
                       help="continue the run in RUN from its latest checkpoint; only --train.* "
                            "overrides may be given (e.g. more --train.steps)")
    train.add_argument("--vocab-size", type=int, metavar="N",
                       help="BPE vocabulary size (same as --data.vocab_size=N)")
    train.add_argument("--compile", action="store_true",
                       help="torch.compile the model (same as --train.compile=true)")
    train.add_argument("--parallel", choices=["auto", "none", "ddp", "fsdp"],
                       help="data parallelism under torchrun: ddp (the default with several "
                            "processes) or fsdp (sharded weights, gradients and optimizer); "
                            "same as --train.parallel=X (see docs/distributed.md)")
    train.add_argument("--force", action="store_true",
                       help="train even when the estimate says the run will not fit in memory "
                            "or one step will take minutes (see docs/errors.md)")
    train.add_argument("--no-samples", action="store_true",
                       help="skip the samples printed at the end")
    train.add_argument("--debug", action="store_true", help="show tracebacks")

    sample = sub.add_parser(
        "sample", help="generate text from a trained run, streamed as it is produced",
        description="Predict, sample, repeat: stream a continuation of --prompt.")
    sample.add_argument("run", type=Path, help="a run directory, e.g. runs/pydoc-char")
    sample.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    # --- integer-token files (issue 18) ---
    sample.add_argument("--prompt-ids", default=None, metavar="IDS",
                        help="ids to continue, e.g. 1,2,3 (a run trained with --data.format=ids; "
                             "prints the ids separated by spaces)")
    sample.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate "
                        "(default: 200)")
    sample.add_argument("--temperature", type=float, default=None,  # None: not given (see --beam)
                        help="softmax temperature; <1 sharper, >1 flatter, 0 greedy (default "
                             f"{SAMPLE_TEMPERATURE})")
    sample.add_argument("--top-k", type=int, default=None,
                        help="sample only among the k most likely tokens (default: off)")
    sample.add_argument("--top-p", type=float, default=None,
                        help="nucleus sampling: the smallest set with probability >= p")
    sample.add_argument("--min-p", type=float, default=None, metavar="P",
                        help="keep tokens at least P times as likely as the most likely one "
                             "(default: off)")
    sample.add_argument("--repetition-penalty", type=float, default=None, metavar="R",
                        help="CTRL penalty on tokens already seen, e.g. 1.2 (default: off)")
    sample.add_argument("--no-repeat-ngram", type=int, default=None, metavar="N",
                        help="never repeat an N-gram (default: off)")
    sample.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="stop when the text contains TEXT, which is not printed "
                             "(repeatable)")
    sample.add_argument("--seed", type=int, default=None, help="random seed for repeatable text")
    sample.add_argument("--num-samples", type=int, default=1, help="independent samples "
                        "(seeds seed, seed+1, ...)")
    sample.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    sample.add_argument("--compile", action="store_true",
                        help="compile the one-token decode step with torch.compile: several "
                             "times faster per token for small models, after a one-off compile")
    sample.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16: the precision "
                        "of the weights while sampling (bf16 roughly doubles decode speed on "
                        "GPUs and on CPUs with native bf16)")
    sample.add_argument("--beam", type=int, default=1, metavar="N",
                        help="beam search with N beams instead of sampling (deterministic; "
                             "the prompt plus --max-new-tokens must fit a learned position table)")
    add_backend_argument(sample)
    sample.add_argument("--debug", action="store_true", help="show tracebacks")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from attnkit.train import Trainer
    from attnkit.train.distributed import teardown

    try:
        cfg, run_dir, resume = _train_config(args, extra)
    except AttnkitError:
        if os.environ.get("RANK", "0") not in ("", "0"):  # torchrun: every rank finds the same
            raise SystemExit(2) from None  # fault in the config, and rank 0 says it once
        raise
    # what the folder held before this command, so that a failed start removes only its own files
    before = None if resume or not Path(run_dir).is_dir() else set(os.listdir(run_dir))
    try:  # under torchrun: one process per rank, and only rank 0 prints
        trainer = Trainer(cfg, run_dir, resume=resume, log=print, force=args.force)
        say = print if trainer.dist.is_main else (lambda *_: None)
        summary = trainer.run()
        skipped = summary["skipped_steps"]
        say(f"done: step {summary['step']}, val loss {summary['val_loss']:.4f}, "
            f"{summary['wall_s']:.0f}s, {summary['tokens_per_s'] / 1000:.1f}k tokens/s, "
            f"peak memory {summary['peak_rss_mb']:.0f} MB"
            f"{f', {skipped} updates skipped' if skipped else ''} -> {trainer.run_dir}")
        if summary["interrupted"]:
            return 0
        report = trainer.report() if trainer.dist.is_main else None
        if report:
            say(report)
        if not args.no_samples and cfg.train.samples > 0:
            for i, text in enumerate(trainer.samples(cfg.train.samples, cfg.train.sample_tokens)):
                say(f"--- sample {i + 1} ---")
                say(text)
            say("---")
        hint = first_ability(trainer.model, NEXT_STEP)
        if cfg.data.format == "ids":  # integer-token files (issue 18): the prompt is ids
            hint = hint.replace('--prompt "The "', "--prompt-ids 1,2,3")
        if cfg.data.task == "series":  # time series as tokens (issue 18): bins, not text
            hint = "forecast: attnkit forecast {run} --data statsmodels:co2 --horizon 24"
        say(hint.format(run=trainer.run_dir))
        return 0
    except BaseException:
        if not resume and os.environ.get("RANK", "0") in ("", "0"):
            _remove_unfinished(Path(run_dir), before)
        raise
    finally:
        teardown()


def _remove_unfinished(run_dir: Path, before: set[str] | None) -> None:
    """A run that failed before its first checkpoint leaves nothing behind: the folder goes
    if this command created it, else only the entries this command added to it (``before``
    lists what the user had there). With a checkpoint it stays, to be resumed."""
    import shutil

    if not run_dir.is_dir() or (run_dir / "checkpoints" / "latest").is_file():
        return
    if before is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in set(os.listdir(run_dir)) - before:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _train_config(args: argparse.Namespace, extra: list[str]):
    """The run's resolved config, its directory, and whether it resumes."""
    from attnkit.config import apply_overrides, config_from_dict, load_recipe, parse_overrides
    from attnkit.runs import (
        check_config_matches,
        check_tokenizer_matches,
        latest_checkpoint,
        read_checkpoint_state,
        read_run_config,
    )

    overrides = parse_overrides(extra)
    if args.vocab_size is not None:
        overrides["data.vocab_size"] = str(args.vocab_size)
    if args.compile:
        overrides["train.compile"] = "true"
    if args.parallel:
        overrides["train.parallel"] = args.parallel
    if args.resume:
        if args.recipe or args.out:
            raise AttnkitError("--resume continues an existing run; drop the recipe and --out")
        bad = [k for k in overrides if not k.startswith("train.")]
        if bad:
            raise AttnkitError(f"cannot change '{bad[0]}' when resuming (only --train.* "
                               f"overrides apply to a resumed run)")
        saved = read_run_config(args.resume)  # "not a run" before "no checkpoint"
        ckpt = latest_checkpoint(args.resume)
        cfg = config_from_dict(apply_overrides(saved, overrides))
        check_config_matches(args.resume, ckpt, saved)
        check_tokenizer_matches(args.resume, ckpt)
        step = read_checkpoint_state(ckpt)["step"]
        if step >= cfg.train.steps:
            raise AttnkitError(f"{args.resume} is finished: it trained all {step} steps "
                               f"(train further with --train.steps=N above {step}, or sample it "
                               f"with `attnkit sample {args.resume}`)")
        return cfg, args.resume, True
    if args.recipe and "=" in args.recipe:
        raise AttnkitError(f"cannot parse '{args.recipe}': overrides start with two dashes "
                           f"(e.g. --{args.recipe})")
    data = load_recipe(args.recipe) if args.recipe else {}
    cfg = config_from_dict(apply_overrides(data, overrides))
    run_dir = args.out or _fresh_run_dir(Path(args.recipe).stem if args.recipe
                                         else DEFAULT_RUN_NAME)
    if args.out and (args.out / "checkpoints").exists():
        raise AttnkitError(f"{args.out} already holds a run (continue it with --resume "
                           f"{args.out}, or choose another --out)")
    if args.out and args.out.is_dir():  # a folder of the user's: never overwrite their files
        taken = [n for n in RUN_FILES if (args.out / n).exists()]
        if taken:
            raise AttnkitError(f"{args.out} already has a {taken[0]}, which training would "
                               f"overwrite (choose another --out, or an empty folder)")
    return cfg, run_dir, False


#: The files training writes at the top of a run folder.
RUN_FILES = ("config.json", "tokenizer.json", "labels.json", "metrics.jsonl")

#: What to run next, and the command for a model that does not continue text, by what the
#: model can do (``model.abilities``, attnkit/models/contract.py), first match wins.
NEXT_STEP = (
    ("generates", 'sample more: attnkit sample {run} --prompt "The " --max-new-tokens 200 '
                  '--temperature 0.8 --top-k 40'),
    ("translates", 'translate: attnkit translate {run} --text "..." --beam 4; score: attnkit '
                   'eval {run}'),
    ("embeds", 'embed: attnkit embed {run} --text "A sentence." --json'),
    ("images", 'explain: attnkit inspect {run} --index 0; serve: attnkit serve {run} '
               '(POST /v1/attnkit/classify)'),
)
ABILITY_COMMAND = (("translates", "attnkit translate"), ("embeds", "attnkit embed"),
                   ("images", "attnkit inspect --image"))


def first_ability(model, table: tuple[tuple[str, str], ...]) -> str | None:
    """The text of the first row of ``table`` whose ability ``model`` has, or None."""
    return next((text for ability, text in table if getattr(model.abilities, ability)), None)


def _fresh_run_dir(name: str) -> Path:
    base = Path("runs") / name
    candidate, i = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{name}-{i}")
        i += 1
    return candidate


def _refuse_sampling_only(args: argparse.Namespace) -> None:
    """``attnkit sample --beam N`` refuses the options that only mean something when sampling,
    if the user gave them, rather than silently ignore them."""
    given = [("--temperature", args.temperature is not None, "beam search is deterministic"),
             ("--top-k", args.top_k is not None, "beam search is deterministic"),
             ("--top-p", args.top_p is not None, "beam search is deterministic"),
             ("--min-p", args.min_p is not None, "beam search is deterministic"),
             ("--seed", args.seed is not None, "beam search is deterministic"),
             ("--num-samples", args.num_samples > 1, "beam search prints its one best continuation"),
             ("--compile", args.compile, "beam search does not use the compiled decode step")]
    for flag, is_given, why in given:
        if is_given:
            raise AttnkitError(f"{flag} does not apply to --beam: {why} (drop {flag}, or drop --beam "
                               f"to sample)")


def cmd_sample(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (see `attnkit sample "
                           f"--help`)")
    import attnkit
    from attnkit.devices import warn_slow_dtype
    from attnkit.generate import stream
    from attnkit.generate.options import CLI, check_sampling

    check_sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                   no_repeat_ngram=args.no_repeat_ngram, seed=args.seed, n=args.num_samples,
                   stop=args.stop, max_new_tokens=args.max_new_tokens, names=CLI)
    if args.beam < 1:
        raise AttnkitError("--beam must be 1 (sampling) or more")
    if args.beam > 1:
        _refuse_sampling_only(args)  # before the default temperature fills in
    if args.temperature is None:
        args.temperature = SAMPLE_TEMPERATURE
    from attnkit.backends import accelerate

    run = attnkit.load(args.run, device=args.device, dtype=args.dtype)
    model, tokenizer = run.model, run.tokenizer
    if not model.abilities.generates:
        raise AttnkitError(f"{args.run} is a {model.cfg.family} model, which does not continue "
                           f"text (use {first_ability(model, ABILITY_COMMAND)} {args.run})")
    warn_slow_dtype(model)
    accelerate(model, purpose="decode", backend=args.backend)
    prompt = args.prompt
    if tokenizer is None:
        raise AttnkitError(f"{args.run} has no tokenizer.json, so text cannot be encoded (add the "
                           f"model's tokenizer.json to the directory)")
    # --- integer-token files (issue 18): the ids tokenizer's text is the ids themselves ---
    if args.prompt_ids is not None:
        from attnkit.data.ids import prompt_from_ids

        prompt = prompt_from_ids(args.prompt_ids, tokenizer)
    if getattr(tokenizer, "kind", None) == "ids":
        if not prompt.strip():
            raise AttnkitError(f"{args.run} reads integer ids, and the prompt has none (give "
                               f"--prompt-ids 1,2,3, or --prompt \"1 2 3\")")
        prompt = prompt.strip() + " "  # "1 2 3" + "4 5" must print as "1 2 3 4 5"
    # --- end integer-token files ---
    n_prompt = len(tokenizer.encode(prompt))  # refuse a bad prompt before printing anything
    if n_prompt > model.cfg.context_length:
        raise AttnkitError(f"the prompt is {n_prompt} tokens but the model's context is "
                           f"{model.cfg.context_length} (shorten the prompt)")
    if args.compile:
        from attnkit.generate.steps import check_compiles

        check_compiles(model)  # before anything is printed
    if args.beam > 1:  # the rules and --stop apply to each beam (docs/sampling.md)
        from attnkit.generate.beam import beam_generate

        print(prompt + beam_generate(model, prompt, args.max_new_tokens, tokenizer=tokenizer,
                                     beam_size=args.beam,
                                     repetition_penalty=args.repetition_penalty,
                                     no_repeat_ngram_size=args.no_repeat_ngram, stop=args.stop))
        return 0
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        sys.stdout.write(prompt)
        for piece in stream(model, prompt, args.max_new_tokens, tokenizer=tokenizer,
                            temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p, seed=seed, min_p=args.min_p,
                            repetition_penalty=args.repetition_penalty,
                            no_repeat_ngram_size=args.no_repeat_ngram, stop=args.stop,
                            compile=args.compile):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take ``--section.key=value`` and ``--section.key value`` out of ``argv`` before argparse
    sees them, so a value is never mistaken for the positional recipe."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key = arg.split("=", 1)[0]
        if arg.startswith("--") and "." in key and not any(c in key for c in "/\\"):
            overrides.append(arg)
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(argv[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


COMMANDS = {"train": cmd_train, "sample": cmd_sample}
DECODING = ("sample", "serve", "translate")  # the commands that stream the weights per token

# Further subcommands live in their own modules under attnkit/commands/. Each defines
# ``add_parser(sub)`` (which calls ``set_defaults(func=run)``) and ``run(args, extra) -> int``,
# and imports anything heavy inside ``run`` so that ``attnkit --help`` stays fast.
COMMAND_MODULES: tuple[str, ...] = ("attnkit.commands.embed", "attnkit.commands.convert")
COMMAND_MODULES += ("attnkit.commands.translate", "attnkit.commands.eval")
COMMAND_MODULES += ("attnkit.commands.serve",)
COMMAND_MODULES += ("attnkit.commands.inspect",)
COMMAND_MODULES += ("attnkit.commands.experiment",)
COMMAND_MODULES += ("attnkit.commands.forecast",)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    debug = "--debug" in argv

    def say(line: str) -> None:
        """The one error line on stderr; under torchrun also in the error file it names in
        TORCHELASTIC_ERROR_FILE, so that its failure summary shows the line where it would say
        "To enable traceback see ..." (the JSON torch.distributed.elastic's ErrorHandler
        writes, with our line in place of a traceback)."""
        print(line, file=sys.stderr)
        error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
        if error_file:
            import json
            import time

            data = {"message": {"message": line, "extraInfo": {
                "py_callstack": line, "timestamp": str(int(time.time()))}}}
            try:
                Path(error_file).write_text(json.dumps(data))
            except OSError:  # the summary is a nicety; the line itself is out
                pass

    try:
        argv, overrides = split_overrides(argv)
        args, extra = parser.parse_known_args(argv)
        extra = overrides + extra
        if args.version:
            from attnkit import __version__

            print(f"attnkit {__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return 2
        func = getattr(args, "func", None) or COMMANDS[args.command]
        from attnkit.runtime import huge_pages, keep_freed_memory

        if args.command in DECODING:
            huge_pages()  # before anything loads torch
        keep_freed_memory()
        return func(args, extra)
    except AttnkitError as e:
        if debug:
            raise
        say(f"error: {e}")
        return e.exit_code
    except SystemExit as e:
        # Under torchrun a rank > 0 that stops quietly (rank 0 reports the same fault) gives
        # rank 0 time to say it: torchrun ends every rank as soon as one exits, and would cut
        # rank 0 off before its error line. Rank 0's exit ends this wait early.
        if (e.code not in (0, None) and "TORCHELASTIC_ERROR_FILE" in os.environ
                and os.environ.get("RANK", "0") not in ("", "0")):
            import time

            time.sleep(15)
        raise
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # the file system said no (permissions, a full disk, a file in the way)
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        say(f"error: {e.strerror or e}{where} (check the path, its permissions and the free "
            f"disk space)")
        return 2


if __name__ == "__main__":
    sys.exit(main())
