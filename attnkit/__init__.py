"""attnkit: the Transformer family, from one readable codebase.

Python API::

    import attnkit
    model = attnkit.load("runs/pydoc-char")      # model.tokenizer is attached
    text = attnkit.generate(model, "The ", max_new_tokens=100, temperature=0.8, top_k=40)
"""

__version__ = "0.1.0"

from attnkit import generate  # noqa: E402  (a callable module: attnkit.generate(model, prompt))
from attnkit.checkpoint import load  # noqa: E402
from attnkit.config import ModelConfig, RunConfig  # noqa: E402
from attnkit.errors import AttnkitError  # noqa: E402
from attnkit.models import Decoder  # noqa: E402

__all__ = ["load", "generate", "Decoder", "ModelConfig", "RunConfig", "AttnkitError",
           "__version__"]
