"""Subcommands beyond train and sample; see ``COMMAND_MODULES`` in attnkit/cli.py."""


def add_backend_argument(parser) -> None:
    """``--backend``, which :func:`attnkit.backends.accelerate` applies to the loaded model."""
    from attnkit.config import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="the speed-ups applied to the loaded model: auto (oneDNN on a CPU "
                             "that has it, unless ATTNKIT_BACKEND=plain), plain (the model as "
                             "written) or onednn (default auto)")
