"""nanoGPT's CPU recipe for character-level Shakespeare, run through attnkit's own trainer.

Prints the validation loss at each evaluation, the final validation loss beside
nanoGPT's published 1.88, wall time, tokens/s and peak memory, and the exact
command that reproduces the run from the shell.

    python benchmarks/shakespeare_char.py [--data ../shared/data/tinyshakespeare.txt]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from attnkit.config import apply_overrides, config_from_dict, load_recipe
from attnkit.train import Trainer

NANOGPT_VAL_LOSS = 1.88  # nanoGPT README, "I only have a macbook" CPU run


def main() -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(here.parent.parent / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        print(f"error: {args.data} not found (pass --data PATH to tinyshakespeare.txt)",
              file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp()) / "shakespeare-char"
    cfg = config_from_dict(apply_overrides(load_recipe("shakespeare-char"),
                                           {"data.path": args.data}))
    trainer = Trainer(cfg, out, log=lambda *_: None)
    summary = trainer.run()
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if "val_loss" in e]
    print(f"command: attnkit train shakespeare-char --data.path={args.data} --out {out}")
    print("step  train_loss  val_loss")
    for e in evals:
        print(f"{e['step']:>4}  {e['loss']:>10.4f}  {e['val_loss']:>8.4f}")
    final = summary["val_loss"]
    print(f"final val loss  attnkit {final:.4f} | nanoGPT reported {NANOGPT_VAL_LOSS:.2f} | "
          f"ratio {final / NANOGPT_VAL_LOSS:.3f}")
    print(f"wall time {summary['wall_s']:.1f} s | {summary['tokens_per_s']:,.0f} tokens/s | "
          f"peak RSS {summary['peak_rss_mb']:.0f} MB")
    return 0 if final <= NANOGPT_VAL_LOSS else 1


if __name__ == "__main__":
    sys.exit(main())
