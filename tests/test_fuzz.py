"""Property-based tests at the trust boundaries: tokenizers (through their saved JSON), the
config readers (command-line overrides, recipes, a run's config.json) and the sampler.

Every property says the same two things: good input does what it should, and bad input is an
:class:`AttnkitError` (one line for the user), never another exception.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from attnkit.config import (
    FAMILY_CONFIGS,
    SECTIONS,
    all_keys,
    apply_overrides,
    config_from_dict,
    parse_overrides,
)
from attnkit.errors import AttnkitError
from attnkit.generate import generate_ids
from attnkit.generate.sampling import (
    apply_temperature,
    min_p_filter,
    no_repeat_ngram,
    repetition_penalty,
    sample,
    top_k_filter,
    top_p_filter,
)
from attnkit.tokenizers import load_tokenizer, train_tokenizer

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# A fixed training text with several scripts, so the BPE learns multi-byte merges.
TEXT = ("The quick brown fox jumps over the lazy dog. café naïve Straße. 注意力就是一切。"
        "Внимание — это всё. 🙂🚀 def f(x):\n    return x ** 2\n") * 20


@pytest.fixture(scope="module")
def saved_tokenizers(tmp_path_factory) -> dict:
    """byte, BPE and char tokenizers, each saved to tokenizer.json and loaded back."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for kind, vocab in (("byte", None), ("bpe", 400), ("char", None)):
        train_tokenizer(kind, TEXT, vocab, specials=("pad", "eos")).save(root / f"{kind}.json")
        out[kind] = load_tokenizer(root / f"{kind}.json")
    return out


# ------------------------------------------------------------------ tokenizers


@FUZZ
@given(text=st.text())
@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_any_unicode_string_round_trips_through_a_saved_byte_level_tokenizer(saved_tokenizers, kind,
                                                                            text):
    tok = saved_tokenizers[kind]
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert not set(ids) & set(tok.special_tokens.values())  # text never becomes a special
    assert tok.decode(ids) == text


@FUZZ
@given(text=st.text(alphabet=sorted(set(TEXT))))
def test_any_string_over_the_alphabet_round_trips_through_a_saved_char_tokenizer(saved_tokenizers,
                                                                                text):
    tok = saved_tokenizers["char"]
    assert tok.decode(tok.encode(text)) == text


@FUZZ
@given(text=st.text(min_size=1))
def test_char_tokenizer_refuses_unseen_characters_with_a_user_error(saved_tokenizers, text):
    tok = saved_tokenizers["char"]
    try:
        ids = tok.encode(text)
    except AttnkitError as e:
        assert "never saw" in str(e) and "\n" not in str(e)
        assert any(c not in TEXT for c in text)
    else:
        assert tok.decode(ids) == text


@FUZZ
@given(head=st.text(max_size=5), surrogate=st.integers(0xD800, 0xDFFF), tail=st.text(max_size=5))
@pytest.mark.parametrize("kind", ["byte", "bpe", "char"])
def test_text_that_is_not_unicode_is_a_user_error(saved_tokenizers, kind, head, surrogate, tail):
    # A command-line argument holding bytes that are not UTF-8 arrives as a lone surrogate.
    with pytest.raises(AttnkitError):
        saved_tokenizers[kind].encode(head + chr(surrogate) + tail)


# ------------------------------------------------------------------ config overrides


KEYS = all_keys()
scalars = st.one_of(
    st.text(max_size=12), st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["none", "null", "true", "false", "1e4", "2_000", "0", "-1", "", "nan", "inf",
                     "rope", "llama", "tiny", "bpe", "cpu", "cuda", "decoder", "lstm", "encoder",
                     "seq2seq", "cosine"]))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=20),
                 st.sampled_from(KEYS).map(lambda k: k[:-1]),  # a near miss
                 st.sampled_from(KEYS).map(lambda k: k.replace(".", "..")))
argument = st.one_of(st.tuples(keys, scalars).map(lambda kv: f"--{kv[0]}={kv[1]}"),
                     keys.map(lambda k: f"--{k}"), st.text(max_size=20), scalars)


@FUZZ
@given(args=st.lists(argument, max_size=6))
def test_any_command_line_overrides_build_a_config_or_raise_a_user_error(args):
    try:
        config = config_from_dict(apply_overrides({}, parse_overrides(args)))
    except AttnkitError as e:
        assert str(e) and "\n" not in str(e)
        return
    # what was accepted is a valid config that survives its own round trip through JSON
    assert config_from_dict(config.to_dict()).to_dict() == config.to_dict()


def _fields(section: str) -> dict[str, typing.Any]:
    cls = SECTIONS[section]
    return {f.name: typing.get_type_hints(cls)[f.name] for f in dataclasses.fields(cls)}


def _valid_values(tp) -> st.SearchStrategy:
    """Values of annotation ``tp`` that its field's checks accept in isolation (or mostly:
    cross-field checks may still refuse a combination, which must then be an AttnkitError)."""
    if typing.get_origin(tp) is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(1, 4096)
    if tp is float:
        return st.floats(0.001, 0.99)
    return st.nothing()


valid_train_or_data = st.one_of(*[
    st.tuples(st.just(f"{s}.{name}"), _valid_values(tp))
    for s in ("train", "data") for name, tp in _fields(s).items()
    if tp in (int, float, bool) or typing.get_origin(tp) is typing.Literal])


@FUZZ
@given(pairs=st.lists(valid_train_or_data, min_size=1, max_size=5, unique_by=lambda kv: kv[0]))
def test_valid_overrides_land_in_the_config(pairs):
    args = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in pairs]
    try:
        config = config_from_dict(apply_overrides({}, parse_overrides(args)))
    except AttnkitError:  # a combination refused as a whole (e.g. batch_size % grad_accum)
        return
    for key, value in pairs:
        section, leaf = key.split(".")
        got = getattr(getattr(config, section), leaf)
        if key == "data.task":  # auto resolves to the family's task
            assert got == (value if value != "auto" else "lm")
        elif isinstance(value, float):
            assert got == pytest.approx(value)
        else:
            assert got == value


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
model_keys = sorted({f.name for c in FAMILY_CONFIGS.values() for f in dataclasses.fields(c)})


def _section(names: list[str], hot: tuple[str, ...] = ()) -> st.SearchStrategy:
    keys = st.one_of(st.sampled_from(hot or names), st.sampled_from(names), st.text(max_size=8))
    return st.dictionaries(keys, st.one_of(json_values, st.text(max_size=8)), max_size=4)


config_files = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "model": st.one_of(_section(model_keys, ("family", "style", "size", "n_heads")), json_values),
        "train": st.one_of(_section([f.name for f in dataclasses.fields(SECTIONS["train"])]),
                           json_values),
        "data": st.one_of(_section([f.name for f in dataclasses.fields(SECTIONS["data"])]),
                          json_values)}))


@FUZZ
@given(data=config_files)
def test_any_json_config_builds_or_raises_a_user_error(data):
    """What a recipe or a (tampered) run config.json can hold: never a crash."""
    try:
        config_from_dict(data)
    except AttnkitError as e:
        assert str(e) and "\n" not in str(e)


# ------------------------------------------------------------------ the sampler


wide = st.floats(-1e4, 1e4, allow_nan=False)
logit_rows = st.lists(st.one_of(wide, wide, wide, st.just(-math.inf)), min_size=1, max_size=40).filter(
    lambda xs: any(math.isfinite(x) for x in xs))


@FUZZ
@given(rows=st.lists(logit_rows, min_size=1, max_size=3).filter(lambda r: len({len(x) for x in r}) == 1),
       temperature=st.one_of(st.just(0.0), st.floats(0.01, 10.0)),
       top_k=st.one_of(st.none(), st.integers(0, 50)),
       top_p=st.one_of(st.none(), st.floats(1e-6, 1.0)),
       min_p=st.one_of(st.none(), st.floats(0.0, 1.0)),
       penalty=st.one_of(st.none(), st.floats(0.1, 10.0)),
       ngram=st.one_of(st.none(), st.integers(0, 4)),
       history=st.lists(st.integers(0, 39), max_size=12),
       seed=st.integers(0, 2**31 - 1))
def test_the_sampled_id_is_valid_and_never_has_zero_filtered_probability(
        rows, temperature, top_k, top_p, min_p, penalty, ngram, history, seed):
    logits = torch.tensor(rows)  # (B, V)
    V = logits.shape[-1]
    history = [h for h in history if h < V]
    shaped = no_repeat_ngram(repetition_penalty(logits, history, penalty), history, ngram)
    ids = sample(shaped, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                 generator=torch.Generator().manual_seed(seed))
    assert ids.shape == (len(rows),) and ids.dtype == torch.int64
    assert ((0 <= ids) & (ids < V)).all()
    if temperature == 0:  # greedy: the best token after the history rules
        assert torch.equal(shaped.gather(-1, ids[:, None])[:, 0], shaped.amax(-1))
        return
    filtered = min_p_filter(top_p_filter(top_k_filter(apply_temperature(shaped.float(), temperature),
                                                      top_k), top_p), min_p)
    probs = filtered.softmax(-1)
    assert (probs.gather(-1, ids[:, None]) > 0).all()


@pytest.fixture(scope="module")
def tiny_model():
    from attnkit.config import ModelConfig
    from attnkit.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, context_length=8, d_model=16, n_layers=1, n_heads=2)
    return build_model(cfg).eval()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.lists(st.integers(0, 10), min_size=1, max_size=8),
       n=st.integers(0, 12),
       temperature=st.one_of(st.just(0.0), st.floats(0.05, 5.0)),
       top_k=st.one_of(st.none(), st.integers(1, 11)),
       top_p=st.one_of(st.none(), st.floats(0.01, 1.0)),
       min_p=st.one_of(st.none(), st.floats(0.0, 1.0)),
       penalty=st.one_of(st.none(), st.floats(0.5, 3.0)),
       ngram=st.one_of(st.none(), st.integers(0, 3)),
       seed=st.integers(0, 2**16))
def test_generation_yields_valid_ids_through_the_sliding_window(tiny_model, prompt, n, temperature,
                                                                top_k, top_p, min_p, penalty, ngram,
                                                                seed):
    """The same rules inside the decode loop, past the 8-token context (the window slides)."""
    assume(len(prompt) <= tiny_model.cfg.context_length)
    ids = list(generate_ids(tiny_model, prompt, n, temperature=temperature, top_k=top_k, top_p=top_p,
                            min_p=min_p, repetition_penalty=penalty, no_repeat_ngram_size=ngram,
                            seed=seed))
    assert len(ids) == n and all(0 <= i < 11 for i in ids)
