"""Sentence embeddings from an encoder: the library side of ``attnkit embed`` and of the
server's ``/v1/embeddings``.

Each text is framed like BERT's inputs (``[CLS] ... [SEP]``), run through the encoder, and
its last hidden states are averaged over the real tokens - the mean pooling of
sentence-transformers (the model's ``embed``, promised by ``model.abilities.embeds``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attnkit.data.labeled import encode_text, pad_batch
from attnkit.errors import AttnkitError
from attnkit.generate.stops import need_tokenizer


@torch.no_grad()
def embed_texts(model: torch.nn.Module, texts: list[str], *, tokenizer=None,
                batch_size: int = 32, normalize: bool = False,
                on_truncate: Callable[[int, int], None] | None = None
                ) -> tuple[torch.Tensor, list[int]]:
    """Embeddings (N, C) of ``texts`` as a float32 tensor on the CPU, and the number of
    tokens each text became (its ``[CLS]`` and ``[SEP]`` included).

    ``model`` is a family with ``abilities.embeds`` (``run = attnkit.load(path)``:
    ``embed_texts(run.model, texts, tokenizer=run.tokenizer)``). A text longer than the
    model's context is cut to it, its ``[SEP]`` kept; ``on_truncate(i, limit)`` is called
    for each text ``i`` that was. ``normalize`` scales each embedding to unit length.
    """
    if not model.abilities.embeds:
        raise AttnkitError(f"a {model.cfg.family} model makes no sentence embeddings (load an "
                           f"encoder: a run of `attnkit train encoder-mlm` or a Hugging Face "
                           f"BERT folder)")
    tokenizer = need_tokenizer(tokenizer)
    if batch_size < 1:
        raise AttnkitError("batch_size must be at least 1")
    limit = model.cfg.context_length
    pad_id = tokenizer.special_tokens.get("pad", 0)
    device = next(model.parameters()).device
    seqs = []
    for i, text in enumerate(texts):
        ids = encode_text(tokenizer, text, limit)
        if on_truncate is not None and len(ids) == limit and \
                len(encode_text(tokenizer, text, limit + 1)) > limit:
            on_truncate(i, limit)
        seqs.append(ids)
    out = []
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[start:start + batch_size], pad_id, device)  # (B, T) each
        out.append(model.embed(ids, mask, normalize=normalize).float().cpu())  # (B, C)
    return torch.cat(out), [len(s) for s in seqs]


__all__ = ["embed_texts"]
