"""The reference every benchmark compares with: the very same weights as a Hugging Face
``transformers`` model, exported with ``attnkit.interop.to_hf`` and loaded back."""

import tempfile
from pathlib import Path

from torch import nn

from attnkit.interop import to_hf


def hf_twin(model: nn.Module) -> nn.Module:
    """``model``'s weights in ``AutoModelForCausalLM`` (transformers' own classes), quietly."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        to_hf(model, Path(tmp) / "hf")
        return AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf")
