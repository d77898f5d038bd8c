"""Hugging Face interop: GPT-2, Llama, BERT, BART and ViT checkpoints in, attnkit models out,
and back; and :func:`load`, which reads a trained run or such a folder.

::

    run = attnkit.interop.from_hf("gpt2-folder")  # a Loaded: run.model, run.tokenizer (or None)
    attnkit.interop.to_hf(run, "exported/")       # config.json, model.safetensors, tokenizer.json
    run = attnkit.load("gpt2-folder")             # attnkit.load recognises such a folder too

One declarative key map per architecture (:mod:`attnkit.interop.keymap`) serves both
directions; the config mappings live in :mod:`attnkit.interop.decoder`, ``bert``, ``bart``
and ``vit``, the dispatch by ``model_type`` and family in :mod:`attnkit.interop.hf`.
Conversion needs only torch, safetensors and JSON - transformers is not imported - and
never unpickles.
"""

from attnkit.interop.convert import convert_from_hf, convert_to_hf
from attnkit.interop.decoder import ARCHITECTURES
from attnkit.interop.hf import EXPORTERS, IMPORTERS, from_hf, is_hf_dir, to_hf
from attnkit.interop.loaded import Loaded
from attnkit.interop.loading import load

__all__ = ["ARCHITECTURES", "EXPORTERS", "IMPORTERS", "Loaded", "convert_from_hf",
           "convert_to_hf", "from_hf", "is_hf_dir", "load", "to_hf"]
