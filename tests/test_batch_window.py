"""Batched generation past the context slides each row's window as generation alone does."""

from __future__ import annotations

import pytest
import torch

from attnkit.config import ModelConfig
from attnkit.errors import AttnkitError
from attnkit.generate import generate_batch_ids, generate_ids
from attnkit.models import Decoder

CTX = 16


def tiny_decoder(pos: str) -> Decoder:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=20, context_length=CTX, d_model=32, n_layers=2, n_heads=2,
                      pos=pos, init_std=0.5)
    return Decoder(cfg).eval()


def prompts() -> list[list[int]]:
    """Prompts of different lengths: rows reach the context at different steps, one at once."""
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 20, (n,), generator=g).tolist() for n in (1, 6, CTX, 11)]


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi", "sinusoidal"])
def test_batched_greedy_past_the_context_is_each_prompt_alone(pos):
    model = tiny_decoder(pos)
    alone = [list(generate_ids(model, p, 40, temperature=0)) for p in prompts()]
    assert generate_batch_ids(model, prompts(), 40, temperature=0) == alone


def test_batched_rules_past_the_context_are_each_prompt_alone():
    model = tiny_decoder("rope")
    rules = dict(temperature=0, repetition_penalty=1.3, no_repeat_ngram_size=3)
    alone = [list(generate_ids(model, p, 40, **rules)) for p in prompts()]
    assert generate_batch_ids(model, prompts(), 40, **rules) == alone


def test_rows_that_stop_early_do_not_disturb_the_others_past_the_context():
    """A row that is done rides along (it no longer slides); the rest still match alone."""
    model = tiny_decoder("alibi")
    stop_after = [3, 40, 20, 27]
    alone = [list(generate_ids(model, p, 40, temperature=0))[:n]
             for p, n in zip(prompts(), stop_after, strict=True)]
    rows = generate_batch_ids(model, prompts(), 40, temperature=0,
                              done=lambda i, ids: len(ids) >= stop_after[i])
    assert rows == alone


def test_a_prompt_longer_than_the_context_is_still_refused():
    model = tiny_decoder("learned")
    with pytest.raises(AttnkitError, match=f"the prompt is {CTX + 1} tokens but the model's "
                                           f"context is {CTX}"):
        generate_batch_ids(model, [[1], [2] * (CTX + 1)], 5)
