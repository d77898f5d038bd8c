"""Sampling rules as pure functions, and generation through a tiny decoder."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import devices
from attnkit.config import ModelConfig
from attnkit.errors import AttnkitError
from attnkit.generate import (
    apply_temperature,
    generate_batch_ids,
    generate_ids,
    sample,
    stream,
    top_k_filter,
    top_p_filter,
)
from attnkit.models import Decoder
from attnkit.models.contract import Abilities
from attnkit.nn import OutputHead
from attnkit.tokenizers import ByteTokenizer, CharTokenizer

NEG_INF = float("-inf")


def kept(logits: torch.Tensor) -> list[int]:
    """Indices that survive a filter (finite logits), for a 1-D tensor."""
    return torch.isfinite(logits).nonzero().flatten().tolist()


# ------------------------------------------------------------------ temperature


def test_apply_temperature_divides():
    logits = torch.tensor([1.0, -2.0, 4.0])
    torch.testing.assert_close(apply_temperature(logits, 2.0), torch.tensor([0.5, -1.0, 2.0]))
    torch.testing.assert_close(apply_temperature(logits, 0.5), torch.tensor([2.0, -4.0, 8.0]))
    assert torch.equal(apply_temperature(logits, 1.0), logits)


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([2.0, 1.0, 0.0])
    p1 = logits.softmax(-1)
    sharp = apply_temperature(logits, 0.5).softmax(-1)
    flat = apply_temperature(logits, 2.0).softmax(-1)
    assert sharp[0] > p1[0] > flat[0]
    assert sharp[2] < p1[2] < flat[2]


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_non_positive_temperature_raises(t):
    with pytest.raises(ValueError, match="temperature must be positive"):
        apply_temperature(torch.zeros(3), t)


# ------------------------------------------------------------------ top-k


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.5, 0.3])
    out = top_k_filter(logits, 2)
    assert kept(out) == [1, 3]
    assert out[1] == 2.0 and out[3] == 1.5  # survivors unchanged
    assert kept(top_k_filter(logits, 1)) == [1]
    assert kept(top_k_filter(logits, 4)) == [0, 1, 3, 4]


@pytest.mark.parametrize("k", [None, 0, 5, 6, 100])
def test_top_k_no_op(k):
    logits = torch.tensor([0.1, 2.0, -1.0, 1.5, 0.3])
    assert torch.equal(top_k_filter(logits, k), logits)


def test_top_k_keeps_ties_at_the_kth_value():
    logits = torch.tensor([3.0, 2.0, 1.0, 2.0, 0.0])
    assert kept(top_k_filter(logits, 2)) == [0, 1, 3]  # both 2.0s survive
    assert kept(top_k_filter(torch.tensor([5.0, 5.0, 5.0, 1.0]), 1)) == [0, 1, 2]


def test_top_k_per_row():
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    out = top_k_filter(logits, 1)
    assert torch.isfinite(out).tolist() == [[False, False, True], [True, False, False]]


# ------------------------------------------------------------------ top-p


# probabilities 0.5, 0.3, 0.15, 0.05 in a shuffled order: index 1, 3, 0, 2 by rank.
# The mass strictly ahead of each (sorted) token is 0, 0.5, 0.8, 0.95; a token is kept
# when that mass is below p.
PROBS = torch.tensor([0.15, 0.5, 0.05, 0.3], dtype=torch.float64)


@pytest.mark.parametrize("p, expected", [
    (1e-6, [1]),
    (0.4, [1]),
    (0.75, [1, 3]),  # 0.5 + 0.3 = 0.8 >= 0.75: the smallest such set
    (0.9, [0, 1, 3]),
    (0.99, [0, 1, 2, 3]),
])
def test_top_p_hand_computed(p, expected):
    logits = PROBS.log()
    out = top_p_filter(logits, p)
    assert kept(out) == expected
    assert torch.equal(out[expected], logits[expected])  # survivors unchanged
    mass = PROBS[expected].sum().item()
    assert mass >= p
    # the smallest set: dropping its least likely member falls below p
    assert mass - PROBS[expected].min().item() < p


@pytest.mark.parametrize("p", [None, 1.0, 1.5])
def test_top_p_no_op(p):
    logits = PROBS.log()
    assert torch.equal(top_p_filter(logits, p), logits)


def test_top_p_per_row_and_shift_invariant():
    logits = torch.stack([PROBS.log(), PROBS.log().flip(-1) + 7.0])
    out = top_p_filter(logits, 0.75)
    assert kept(out[0]) == [1, 3]
    assert kept(out[1]) == [0, 2]


def test_filters_compose():
    logits = PROBS.log()
    # top-k 3 keeps 0.5, 0.3, 0.15; renormalised 0.526, 0.316, 0.158; p=0.75 then keeps two
    assert kept(top_p_filter(top_k_filter(logits, 3), 0.75)) == [1, 3]


# ------------------------------------------------------------------ sample


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.9], [5.0, -1.0, 4.0], [0.0, 0.0, 9.0]])
    assert sample(logits, temperature=0).tolist() == [1, 0, 2]
    # greedy ignores the filters and the generator
    g = torch.Generator().manual_seed(0)
    assert sample(logits, temperature=0, top_k=1, top_p=0.1, generator=g).tolist() == [1, 0, 2]


def test_sample_shape_and_range():
    logits = torch.randn(5, 11)
    out = sample(logits, generator=torch.Generator().manual_seed(3))
    assert out.shape == (5,) and out.dtype == torch.int64
    assert ((out >= 0) & (out < 11)).all()


def test_seeded_generator_is_reproducible():
    logits = torch.zeros(4, 50)  # uniform: every draw is pure chance

    def draws(seed: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        return [sample(logits, temperature=1.0, generator=g).tolist() for _ in range(5)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_top_k_one_is_greedy_whatever_the_temperature():
    logits = torch.tensor([[0.0, 0.1, 0.05]])
    g = torch.Generator().manual_seed(0)
    assert {int(sample(logits, temperature=5.0, top_k=1, generator=g)) for _ in range(20)} == {1}


def test_sample_follows_the_distribution():
    logits = torch.tensor([0.7, 0.2, 0.1]).log().expand(20000, 3)
    out = sample(logits, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out, minlength=3).float() / out.numel()
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02, rtol=0)


def test_draw_follows_each_rows_distribution_and_skips_zero_probabilities():
    from attnkit.generate.sampling import draw

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).expand(40000, 5)
    out = draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(out, minlength=5).float() / out.numel()
    torch.testing.assert_close(freq, probs[0], atol=0.01, rtol=0)
    assert freq[1] == 0 and freq[4] == 0
    one_hot = torch.eye(6)[[3, 0, 5]]  # each row certain of a different token
    assert draw(one_hot).tolist() == [3, 0, 5]


def test_draw_ends_in_the_last_possible_token_when_the_uniform_rounds_up(monkeypatch):
    """A uniform draw that lands on the total (u * total rounds up) is past every token; the
    draw then ends in the last token of non-zero probability, never in a zero one."""
    from attnkit.generate.sampling import draw

    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.ones(shape, dtype=kw["dtype"]))
    probs = torch.tensor([[0.25, 0.25, 0.5, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0, 0.5]])
    assert draw(probs).tolist() == [2, 4]


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-30, 30, allow_nan=False), min_size=2, max_size=24),
    temperature=st.floats(0.05, 5.0),
    top_k=st.one_of(st.none(), st.integers(1, 30)),
    top_p=st.one_of(st.none(), st.floats(0.01, 1.0)),
    seed=st.integers(0, 2**31 - 1),
)
def test_sampled_token_is_never_filtered_out(values, temperature, top_k, top_p, seed):
    logits = torch.tensor([values])
    after_k = top_k_filter(apply_temperature(logits, temperature), top_k)
    filtered = top_p_filter(after_k, top_p)
    survivors = torch.isfinite(filtered[0])
    assert (logits[0][survivors] == logits[0].max()).any()  # a most likely token survives
    if top_k is not None:
        assert torch.isfinite(after_k[0]).sum() >= min(top_k, len(values))
    if top_p is not None:
        assert after_k[0].softmax(-1)[survivors].sum() >= top_p - 1e-5
    token = int(sample(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                       generator=torch.Generator().manual_seed(seed))[0])
    assert 0 <= token < len(values)
    assert survivors[token]
    assert filtered[0].softmax(-1)[token] > 0


# ------------------------------------------------------------------ generation

CHARS = list("abcdefgh \n")


def tiny_decoder(pos: str = "learned", context_length: int = 16) -> Decoder:
    torch.manual_seed(0)
    # a large init spreads the logits so greedy choices are never near-ties
    cfg = ModelConfig(vocab_size=len(CHARS), context_length=context_length, d_model=32,
                      n_layers=1, n_heads=2, pos=pos, init_std=0.5)
    return Decoder(cfg).eval()


@pytest.fixture(scope="module")
def tok() -> CharTokenizer:
    return CharTokenizer(CHARS)


@pytest.fixture(scope="module")
def model() -> Decoder:
    return tiny_decoder()


def test_generate_module_is_callable(model, tok):
    text = attnkit.generate(model, "ab", 10, tokenizer=tok, seed=1)
    assert isinstance(text, str) and len(text) == 10
    assert set(text) <= set(CHARS)
    assert attnkit.generate.generate(model, "ab", 10, tokenizer=tok, seed=1) == text


def test_stream_pieces_concatenate_to_generate(model, tok):
    pieces = list(stream(model, "ab", 12, tokenizer=tok, temperature=1.0, seed=3))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == attnkit.generate(model, "ab", 12, tokenizer=tok, seed=3)
    assert len(pieces) == 12  # a char tokenizer completes a piece with every token


def test_same_seed_same_text(model, tok):
    kw = dict(tokenizer=tok, temperature=1.5, seed=11)
    assert attnkit.generate(model, "ab", 20, **kw) == attnkit.generate(model, "ab", 20, **kw)
    texts = {attnkit.generate(model, "ab", 20, tokenizer=tok, temperature=1.5, seed=s)
             for s in range(5)}
    assert len(texts) > 1


def test_generation_restores_training_mode(model, tok):
    model.train()
    try:
        attnkit.generate(model, "a", 3, tokenizer=tok, seed=0)
        assert model.training
    finally:
        model.eval()
    attnkit.generate(model, "a", 3, tokenizer=tok, seed=0)
    assert not model.training


def test_zero_new_tokens(model, tok):
    assert attnkit.generate(model, "abc", 0, tokenizer=tok) == ""


@pytest.mark.parametrize("pos", ["learned", "rope", "alibi"])
def test_generation_beyond_the_context_slides(pos, tok):
    model = tiny_decoder(pos, context_length=8)
    text = attnkit.generate(model, "abc", 30, tokenizer=tok, seed=0)
    assert len(text) == 30


def test_prompt_longer_than_the_context(model, tok):
    ctx = model.cfg.context_length
    assert len(attnkit.generate(model, "a" * ctx, 3, tokenizer=tok, seed=0)) == 3
    with pytest.raises(AttnkitError, match=f"the prompt is {ctx + 1} tokens.*context is {ctx}"):
        attnkit.generate(model, "a" * (ctx + 1), 3, tokenizer=tok)


def test_empty_prompt_and_missing_tokenizer(model, tok):
    with pytest.raises(AttnkitError, match="prompt is empty"):
        attnkit.generate(model, "", 3, tokenizer=tok)
    with pytest.raises(AttnkitError, match="no tokenizer"):
        attnkit.generate(model, "ab", 3)


def test_one_forward_pass_per_new_token(tok):
    """n new tokens take the prefill and n - 1 one-token steps: no pass for a token after
    the last, and the cache is sized to the run (prompt + n), not to the whole context."""
    model = tiny_decoder(context_length=64)
    calls, caches = [], []
    real_hidden, real_new_cache = model.hidden_states, model.new_cache
    # every pass, greedy (which asks the output layer for the argmax alone) or batched
    model.hidden_states = lambda ids, **kw: calls.append(ids.shape) or real_hidden(ids, **kw)
    model.new_cache = lambda *a: caches.append(real_new_cache(*a)) or caches[-1]
    prompt = tok.encode("abc")
    assert len(list(generate_ids(model, prompt, 5, temperature=0))) == 5
    assert calls == [(1, 3)] + [(1, 1)] * 4
    assert caches[-1].max_len == 3 + 5
    calls.clear()
    rows = generate_batch_ids(model, [prompt, prompt[:2]], 4, temperature=0)
    assert [len(r) for r in rows] == [4, 4] and calls == [(2, 3)] + [(2, 1)] * 3


def greedy_without_cache(model: Decoder, ids: list[int], n: int, window) -> list[int]:
    """Argmax of a full forward over ``window(len(ids))`` most recent tokens, each step."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            w = window(len(ids))
            logits, _ = model(torch.tensor([ids[-w:]]))
            nxt = int(logits[0, -1].argmax())
            ids.append(nxt)
            out.append(nxt)
    return out


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "alibi", "none"])
def test_greedy_equals_full_forward_within_the_context(pos, tok):
    model = tiny_decoder(pos)
    ctx = model.cfg.context_length
    prompt = tok.encode("abc")
    n = ctx - len(prompt)
    cached = list(generate_ids(model, prompt, n, temperature=0))
    assert cached == greedy_without_cache(model, prompt, n, window=lambda length: length)
    assert len(set(cached)) > 1  # not a degenerate repetition of one token


@pytest.mark.skipif(not devices.cpu_has_native_bf16(),
                    reason="the bf16 screen runs only on a CPU with native bf16 (AVX512-BF16 or AMX)")
def test_greedy_through_the_output_layers_screen_gives_the_full_forward_tokens():
    """With a vocabulary-sized output layer, accelerated greedy decoding asks it for the argmax
    alone (the bf16 screen, DecodeHead.greedy) and never builds the fp32 logits, with the
    tokens of full forward passes of the plain model."""
    from attnkit.backends import accelerate

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16384, context_length=32, d_model=256, n_layers=1, n_heads=4)
    model = Decoder(cfg).eval()
    prompt = [5, 700, 9000]
    expected = greedy_without_cache(model, prompt, 12, window=lambda length: length)
    fast = accelerate(model, purpose="decode")
    assert list(generate_ids(fast, prompt, 12, temperature=0)) == expected
    assert fast.lm_head._screen is not None and fast.lm_head._packed is None
    fast.lm_head._screen = None
    list(generate_ids(fast, prompt, 3, temperature=0, repetition_penalty=1.3))  # full logits
    assert fast.lm_head._screen is None and fast.lm_head._packed is not None


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_greedy_equals_full_forward_beyond_the_context(pos, tok):
    """Documented rule: once the sequence fills the context, the cache is refilled with the
    most recent ``context_length - 1`` tokens; the next token extends it back to a full
    window. So past the context, predictions alternate between windows of ctx - 1 and ctx."""
    model = tiny_decoder(pos, context_length=8)
    ctx = model.cfg.context_length
    prompt = tok.encode("abc")

    def window(length: int) -> int:
        if length <= ctx:
            return length
        return ctx if (length - ctx) % 2 == 0 else ctx - 1

    cached = list(generate_ids(model, prompt, 25, temperature=0))
    assert cached == greedy_without_cache(model, prompt, 25, window)


# ------------------------------------------------------------------ byte-level streaming


class ScriptedModel(torch.nn.Module):
    """Stands in for a decoder: each step makes the next scripted byte certain. Its hidden
    state is the logits themselves (C = V = 256), so its output layer is the identity."""

    abilities = Abilities(generates=True)

    def __init__(self, script: bytes, context_length: int = 64) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(context_length=context_length)
        self.lm_head = OutputHead(256, 256, bias=False)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.eye(256))
        self.script = list(script)
        self.calls = 0

    def new_cache(self, batch_size: int, max_len: int | None = None):
        cache = SimpleNamespace(length=0)
        cache.reset = lambda: setattr(cache, "length", 0)
        return cache

    def hidden(self, ids: torch.Tensor, *, cache=None) -> torch.Tensor:
        h = torch.full((ids.shape[0], ids.shape[1], 256), -10.0)  # (B, T, C)
        h[:, -1, self.script[self.calls % len(self.script)]] = 10.0
        self.calls += 1
        if cache is not None:
            cache.length += ids.shape[1]
        return h

    def forward(self, ids: torch.Tensor, targets=None, *, cache=None):
        return self.lm_head(self.hidden(ids, cache=cache)), None


@pytest.mark.parametrize("text", ["é€😀", "aé b€c😀"])
def test_byte_stream_never_yields_half_a_character(text):
    data = text.encode("utf-8")
    model = ScriptedModel(data)
    pieces = list(stream(model, "x", len(data), tokenizer=ByteTokenizer(), temperature=0))
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == text
    assert pieces == list(text)  # each character as soon as its last byte arrives


def test_byte_stream_through_the_sliding_window():
    text = "€" * 10
    data = text.encode("utf-8")
    model = ScriptedModel(data, context_length=4)
    pieces = list(stream(model, "x", len(data), tokenizer=ByteTokenizer(), temperature=0))
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


def test_incomplete_character_at_the_end_is_flushed():
    data = "é€".encode()[:-1]  # the euro sign is cut short
    model = ScriptedModel(data)
    pieces = list(stream(model, "x", len(data), tokenizer=ByteTokenizer(), temperature=0))
    assert pieces[0] == "é"
    assert "".join(pieces) == "é\ufffd"


def test_generate_given_a_loaded_run_says_to_pass_its_model(tok):
    from attnkit.config import RunConfig

    run = attnkit.Loaded(tiny_decoder("learned"), tok, RunConfig())
    with pytest.raises(AttnkitError, match="pass run.model with tokenizer=run.tokenizer"):
        attnkit.generate(run, "ab", 3, tokenizer=tok)
    assert run.generate("ab", 3, temperature=0) == attnkit.generate(run.model, "ab", 3,
                                                                   tokenizer=tok, temperature=0)
