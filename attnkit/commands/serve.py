"""``attnkit serve``: an OpenAI-compatible HTTP server and a browser playground for one run.

FastAPI and uvicorn are imported inside :func:`run`, so ``attnkit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attnkit.commands import add_backend_argument
from attnkit.errors import AttnkitError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a run over an OpenAI-compatible HTTP API, with a browser playground",
        description="Serve RUN at http://HOST:PORT: /v1/completions, /v1/chat/completions, "
                    "/v1/embeddings (encoders), /v1/attnkit/classify (image models), /v1/models, "
                    "/health, and a playground at /.",
        epilog="examples:\n"
               "  attnkit serve runs/pydoc-char\n"
               "  attnkit serve runs/pydoc-char --port 8080 --api-key secret\n"
               "  attnkit serve runs/vit-digits     # POST /v1/attnkit/classify {\"image\": BASE64}\n"
               "see docs/serving.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory or a Hugging Face model folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every /v1 request")
    p.add_argument("--max-tokens-limit", type=int, default=1024, metavar="N",
                   help="the largest max_tokens a request may ask for (default 1024)")
    p.add_argument("--name", default=None, help="the model name clients use (default: the "
                   "run directory's name)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16: the precision of the "
                   "weights while serving (see attnkit sample --help)")
    add_backend_argument(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise AttnkitError(f"unrecognized arguments: {' '.join(extra)} (see `attnkit serve --help`)")
    if not 0 <= args.port <= 65535:
        raise AttnkitError("--port must be in 0..65535")
    if args.max_tokens_limit < 1:
        raise AttnkitError("--max-tokens-limit must be at least 1")
    try:
        import uvicorn

        from attnkit.serve import create_app
    except ImportError as e:
        raise AttnkitError(f"attnkit serve needs {e.name} (pip install fastapi uvicorn)") from None
    import attnkit
    from attnkit.backends import accelerate
    from attnkit.devices import warn_slow_dtype

    loaded = attnkit.load(args.run, device=args.device, dtype=args.dtype)
    warn_slow_dtype(loaded.model)
    accelerate(loaded.model, purpose="decode", backend=args.backend)
    name = args.name or Path(args.run).resolve().name
    app = create_app(loaded, name, api_key=args.api_key, max_tokens_limit=args.max_tokens_limit)
    if args.host not in LOOPBACK and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach this "
              f"address can use the model", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    # the playground is text only; an image model answers the classify endpoint
    where = "API: POST /v1/attnkit/classify" if loaded.model.abilities.images else \
        "playground: /, API: /v1"
    print(f"serving {args.run} as '{name}' at http://{shown}:{args.port} ({where}; Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
