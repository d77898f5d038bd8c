"""attnkit: the Transformer family, from one readable codebase.

Python API::

    import attnkit
    run = attnkit.load("runs/pydoc-char")        # a Loaded: run.model, run.tokenizer, run.config
    text = run.generate("The ", max_new_tokens=100, temperature=0.8, top_k=40)
    text = attnkit.generate(run.model, "The ", 100, tokenizer=run.tokenizer)  # the same

The names below are imported on first use, so ``import attnkit`` (and the ``attnkit``
command, before it knows what it will run) does not load PyTorch: a setting that must be
made before PyTorch starts (:func:`attnkit.runtime.huge_pages`) still can be.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {"load": "attnkit.interop.loading", "Loaded": "attnkit.interop.loaded",
         "ModelConfig": "attnkit.config",
         "RunConfig": "attnkit.config", "AttnkitError": "attnkit.errors",
         "Decoder": "attnkit.models", "accelerate": "attnkit.backends"}


def __getattr__(name: str):
    if name == "generate":  # a callable module: attnkit.generate(model, prompt)
        return importlib.import_module("attnkit.generate")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attnkit' has no attribute {name!r}")


__all__ = ["load", "Loaded", "accelerate", "generate", "Decoder", "ModelConfig", "RunConfig", "AttnkitError",
           "__version__"]
