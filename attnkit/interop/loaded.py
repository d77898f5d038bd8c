"""A loaded run: the model and everything that came with it, as one typed object.

:func:`attnkit.load` (a run folder or a Hugging Face folder) and the ``from_hf*`` converters
return a :class:`Loaded`; the model itself is a plain ``nn.Module`` with nothing hung on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from attnkit.config import RunConfig
from attnkit.generate import generate as generate_text
from attnkit.generate import stream as stream_text


@dataclass
class Loaded:
    """``model`` in eval mode; ``tokenizer`` (None for a converted run that kept only token
    ids); ``config`` the run's resolved :class:`~attnkit.config.RunConfig`; ``labels`` a
    classifier's class names in id order (None otherwise); ``token_ids`` the special ids of
    a converted encoder-decoder (pad, bos, eos, decoder_start; None otherwise); ``source``
    the folder it was read from (None for a model converted in memory)."""

    model: nn.Module
    tokenizer: Any | None
    config: RunConfig
    labels: list[str] | None = None
    token_ids: dict[str, int | None] | None = None
    source: Path | None = None

    def generate(self, prompt: str, max_new_tokens: int = 200, **kwargs: Any) -> str:
        """:func:`attnkit.generate.generate` with this run's model and tokenizer."""
        return generate_text(self.model, prompt, max_new_tokens, tokenizer=self.tokenizer, **kwargs)

    def stream(self, prompt: str, max_new_tokens: int = 200, **kwargs: Any):
        """:func:`attnkit.generate.stream` with this run's model and tokenizer."""
        return stream_text(self.model, prompt, max_new_tokens, tokenizer=self.tokenizer, **kwargs)


def unpack(run: Loaded | nn.Module, tokenizer: Any | None = None,
           labels: list[str] | None = None, token_ids: dict[str, int | None] | None = None
           ) -> tuple[nn.Module, Any | None, list[str] | None, dict[str, int | None] | None]:
    """``(model, tokenizer, labels, token_ids)`` of ``run``, a :class:`Loaded` or a bare model,
    for the functions that take either (the exporters): an argument given here wins over the
    field of a Loaded; a bare model has only what is given."""
    if isinstance(run, Loaded):
        return (run.model, run.tokenizer if tokenizer is None else tokenizer,
                run.labels if labels is None else labels,
                run.token_ids if token_ids is None else token_ids)
    return run, tokenizer, labels, token_ids
