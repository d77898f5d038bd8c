"""Greedy decoding and beam search: a toy model with known probabilities, and real models."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from test_cli import cli
from test_errors import refused
from torch import nn

import attnkit
from attnkit.config import DecoderConfig, Seq2SeqConfig
from attnkit.data.pairs import source_batch
from attnkit.errors import AttnkitError
from attnkit.generate import generate_ids
from attnkit.generate.beam import (
    beam_generate,
    beam_search,
    beam_search_seq2seq,
    greedy_seq2seq,
    length_penalty,
    translate_ids,
)
from attnkit.generate.sampling import repetition_penalty
from attnkit.models import build_model
from attnkit.models.contract import Abilities
from attnkit.nn import KVCache
from attnkit.tokenizers import CharTokenizer

EOS, START, A, B, C = range(5)


class ToyCache:
    length = 0

    def reorder(self, indices: torch.Tensor) -> None:
        pass


class Bigram(nn.Module):
    """A decoder-only "model" whose next-token distribution depends on the last token alone."""

    abilities = Abilities(generates=True)  # beam search calls forward with a cache

    def __init__(self, table: dict[int, dict[int, float]]) -> None:
        super().__init__()
        probs = torch.zeros(5, 5)
        for prev, row in table.items():
            for tok, p in row.items():
                probs[prev, tok] = p
        self.logits = nn.Parameter(probs.log())  # impossible tokens: -inf
        self.cfg = SimpleNamespace(context_length=64, pos="none", family="toy")

    def new_cache(self, batch_size: int, max_len: int | None = None) -> ToyCache:
        return ToyCache()

    def forward(self, ids: torch.Tensor, targets=None, *, cache=None):
        return self.logits[ids], None  # (B, T, V)


# From START: A (0.6) or B (0.4). After A: C (0.55) or EOS; after B or C: EOS.
# Greedy follows A, C, EOS (p = 0.33); the best sequence is B, EOS (p = 0.4).
TOY = Bigram({START: {A: 0.6, B: 0.4}, A: {C: 0.55, EOS: 0.45}, B: {EOS: 1.0}, C: {EOS: 1.0},
              EOS: {EOS: 1.0}})


def test_toy_greedy_misses_what_beam_two_finds():
    greedy = beam_search(TOY, [START], beam_size=1, max_new_tokens=5, eos_id=EOS)[0]
    assert greedy.tokens == [A, C] and greedy.score == pytest.approx(math.log(0.33))
    best = beam_search(TOY, [START], beam_size=2, max_new_tokens=5, eos_id=EOS, n_best=2)
    assert [h.tokens for h in best] == [[B], [A, C]]
    assert best[0].score == pytest.approx(math.log(0.4))


def test_length_penalty_favours_the_longer_sequence_as_alpha_grows():
    # [B] (2 tokens with EOS) vs [A, C] (3 tokens): log(0.4) / lp(2) against log(0.33) / lp(3).
    for alpha, winner in [(0.0, [B]), (1.0, [B]), (2.0, [A, C])]:
        best = beam_search(TOY, [START], beam_size=2, max_new_tokens=5, eos_id=EOS,
                           length_penalty=alpha)[0]
        assert best.tokens == winner, alpha
        assert best.score == pytest.approx(max(math.log(0.4) / length_penalty(2, alpha),
                                               math.log(0.33) / length_penalty(3, alpha)))
    assert length_penalty(7, 0.0) == 1.0 and length_penalty(1, 0.6) == 1.0


def test_max_new_tokens_ends_unfinished_beams():
    best = beam_search(TOY, [START], beam_size=2, max_new_tokens=1, eos_id=EOS, n_best=2)
    assert [h.tokens for h in best] == [[A], [B]]


def test_kv_cache_reorder_follows_rows():
    cache = KVCache(2, 3, 1, 2, 4)
    for layer in range(2):
        cache.update(layer, torch.arange(3.0)[:, None, None, None].expand(3, 1, 1, 2),
                     torch.zeros(3, 1, 1, 2))
    cache.advance(1)
    cache.reorder(torch.tensor([2, 2, 0, 1]))
    assert cache.k[1][:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0, 1.0] and cache.length == 1


def seq2seq_model(**kw):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(vocab_size=12, d_model=32, n_heads=4, n_kv_heads=2, n_encoder_layers=2,
                        n_decoder_layers=2, context_length=24, dropout=0.0, **kw)
    return build_model(cfg).eval()


def sources(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(3, 12, (5 + 2 * i,), generator=g).tolist() + [2] for i in range(n)]
    return source_batch(seqs, pad_id=0)


@pytest.mark.parametrize("pos", ["sinusoidal", "rope"])
def test_seq2seq_beam_one_is_greedy(pos):
    model = seq2seq_model(pos=pos)
    src, mask = sources()
    for eos in (2, 5, 7):  # some rows stop early, some run to the limit
        greedy = greedy_seq2seq(model, src, mask, bos_id=1, eos_id=eos, max_new_tokens=10)
        beam = beam_search_seq2seq(model, src, mask, bos_id=1, eos_id=eos, beam_size=1,
                                   max_new_tokens=10)
        assert [h[0].tokens for h in beam] == greedy


def test_seq2seq_beams_of_a_batch_match_each_source_alone():
    model = seq2seq_model()
    src, mask = sources(3)
    together = beam_search_seq2seq(model, src, mask, bos_id=1, eos_id=5, beam_size=3,
                                   max_new_tokens=8, length_penalty=0.6)
    for i in range(3):
        n = int(mask[i].sum())
        alone = beam_search_seq2seq(model, src[i:i + 1, :n], None, bos_id=1, eos_id=5,
                                    beam_size=3, max_new_tokens=8, length_penalty=0.6)
        assert alone[0][0].tokens == together[i][0].tokens
        assert alone[0][0].score == pytest.approx(together[i][0].score, abs=1e-4)


def test_seq2seq_beam_scores_are_the_sequence_log_probability():
    model = seq2seq_model()
    src, mask = sources(2)
    hyps = beam_search_seq2seq(model, src, mask, bos_id=1, eos_id=5, beam_size=4,
                               max_new_tokens=6, n_best=4)
    for i, row in enumerate(hyps):
        assert len(row) >= 2 and row == sorted(row, key=lambda h: -h.score)
        for h in row:
            ended = len(h.tokens) < 6  # shorter than the limit: it emitted EOS
            seq = h.tokens + ([5] if ended else [])
            inp = torch.tensor([[1] + seq[:-1]])
            logp = F.log_softmax(model(inp, src_ids=src[i:i + 1], src_mask=mask[i:i + 1])[0], -1)
            total = logp[0, torch.arange(len(seq)), torch.tensor(seq)].sum().item()
            assert h.score == pytest.approx(total, abs=1e-4)


def test_decoder_only_beam_one_is_greedy_and_scores_match():
    torch.manual_seed(0)
    model = build_model(DecoderConfig(vocab_size=16, d_model=32, n_heads=4, n_kv_heads=2,
                                      n_layers=2, context_length=32, pos="rope")).eval()
    prompt = [3, 1, 4, 1, 5]
    greedy = list(generate_ids(model, prompt, 8, temperature=0))
    assert beam_search(model, prompt, beam_size=1, max_new_tokens=8)[0].tokens == greedy
    best = beam_search(model, prompt, beam_size=4, max_new_tokens=8, n_best=4)
    assert len(best) == 4 and len({tuple(h.tokens) for h in best}) == 4
    for h in best:
        ids = torch.tensor([prompt + h.tokens])
        logp = F.log_softmax(model(ids)[0][0, len(prompt) - 1:-1], -1)
        assert h.score == pytest.approx(logp[torch.arange(8), torch.tensor(h.tokens)].sum().item(),
                                        abs=1e-4)
    # With no EOS every beam runs the full length; here beam 4 finds a likelier one than greedy.
    assert best[0].score >= beam_search(model, prompt, beam_size=1, max_new_tokens=8)[0].score - 1e-5


def test_bad_arguments_are_attnkit_errors():
    model = seq2seq_model(pos="learned")
    with pytest.raises(AttnkitError, match="beam size"):
        beam_search(TOY, [START], beam_size=0, max_new_tokens=3)
    with pytest.raises(AttnkitError, match="prompt is empty"):
        beam_search(TOY, [], max_new_tokens=3)
    with pytest.raises(AttnkitError, match="learned position table"):
        translate_ids(model, [[3, 4, 2]], pad_id=0, bos_id=1, eos_id=2, max_new_tokens=30)


# --- the sampling rules and stop strings in beam search ---------------------------------------

CHARS = list("abcdefgh \n")


def tiny_decoder(pos: str = "rope") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(DecoderConfig(vocab_size=len(CHARS), d_model=32, n_heads=2, n_layers=2,
                                     context_length=64, pos=pos, init_std=0.5)).eval()


def bigrams(ids: list[int]) -> list[tuple[int, int]]:
    return list(zip(ids, ids[1:]))


def test_done_ends_a_beam_as_eos_does():
    """A beam that ``done`` ends is finished exactly like one that emits EOS, its last token
    kept: the same hypotheses, the same scores (the length penalty counts the EOS too)."""
    model = tiny_decoder()
    prompt, eos = [0, 1], 5
    kw = dict(beam_size=3, max_new_tokens=12, length_penalty=0.6, n_best=3)
    by_eos = beam_search(model, prompt, eos_id=eos, **kw)
    by_done = beam_search(model, prompt, done=lambda ids: ids[-1] == eos, **kw)
    assert any(len(h.tokens) < 12 for h in by_eos)  # some beams did end early
    assert [h.tokens for h in by_done] == [h.tokens + [eos] if len(h.tokens) < 12 else h.tokens
                                           for h in by_eos]
    assert [h.score for h in by_done] == pytest.approx([h.score for h in by_eos], abs=1e-5)


def test_beam_one_with_the_rules_is_greedy_with_the_rules():
    model = tiny_decoder()
    prompt = [0, 1, 0]
    rules = dict(repetition_penalty=1.5, no_repeat_ngram_size=3)
    greedy = list(generate_ids(model, prompt, 20, temperature=0, **rules))
    assert beam_search(model, prompt, beam_size=1, max_new_tokens=20, **rules)[0].tokens == greedy
    assert greedy != list(generate_ids(model, prompt, 20, temperature=0))


def test_no_repeat_ngram_holds_in_every_beam():
    model = tiny_decoder()
    prompt = [0, 1]
    plain = bigrams(prompt + beam_search(model, prompt, beam_size=3, max_new_tokens=30)[0].tokens)
    assert len(set(plain)) < len(plain)  # without the rule, beam search repeats bigrams here
    for h in beam_search(model, prompt, beam_size=3, max_new_tokens=30, n_best=3,
                         no_repeat_ngram_size=2):
        pairs = bigrams(prompt + h.tokens)
        assert len(h.tokens) == 30 and len(set(pairs)) == len(pairs), h.tokens


def test_repetition_penalty_sees_each_beams_own_history():
    """Every hypothesis's score is its log-probability under the penalised distribution,
    the penalty taken over the prompt and that hypothesis's own tokens, step by step."""
    model = tiny_decoder()
    prompt = [0, 1]
    hyps = beam_search(model, prompt, beam_size=4, max_new_tokens=10, n_best=4,
                       repetition_penalty=3.0)
    assert len({tuple(h.tokens) for h in hyps}) == 4
    plain = beam_search(model, prompt, beam_size=4, max_new_tokens=10, n_best=4)
    assert [h.tokens for h in hyps] != [h.tokens for h in plain]
    for h in hyps:
        ids = prompt + h.tokens
        logits = model(torch.tensor([ids]))[0][0, len(prompt) - 1:-1]  # (10, V)
        total = sum(F.log_softmax(repetition_penalty(logits[t], ids[:len(prompt) + t], 3.0),
                                  -1)[tok].item() for t, tok in enumerate(h.tokens))
        assert h.score == pytest.approx(total, abs=1e-4)


def test_beam_generate_stops_and_cuts_before_the_stop():
    model, tok = tiny_decoder(), CharTokenizer(CHARS)
    full = beam_generate(model, "ab", 30, tokenizer=tok, beam_size=3)
    stop = full[10:12]
    cut = beam_generate(model, "ab", 30, tokenizer=tok, beam_size=3, stop=stop)
    assert stop in full and stop not in cut and len(cut) < 30
    # the text is the best finished beam's, cut where its stop string begins
    ids = beam_search(model, tok.encode("ab"), beam_size=3, max_new_tokens=30,
                      done=lambda t: stop in tok.decode(t))[0].tokens
    assert tok.decode(ids).index(stop) == len(cut) and tok.decode(ids).startswith(cut)
    # with a char tokenizer, a one-character stop ends a beam exactly as that token as EOS does
    for c in set(full):
        as_eos = beam_search(model, tok.encode("ab"), beam_size=3, max_new_tokens=30,
                             eos_id=tok.encode(c)[0])[0].tokens
        assert beam_generate(model, "ab", 30, tokenizer=tok, beam_size=3, stop=c) == \
            tok.decode(as_eos), c
    # one beam is greedy decoding, stop strings included
    for s in (stop, full[4:6], "\n"):
        assert beam_generate(model, "ab", 30, tokenizer=tok, beam_size=1, stop=s) == \
            attnkit.generate(model, "ab", 30, tokenizer=tok, temperature=0, stop=s)
    assert beam_generate(model, "ab", 0, tokenizer=tok, beam_size=3) == ""


# --- attnkit sample --beam --------------------------------------------------------------------


def test_sample_beam_applies_stop_and_rules(small_run, capsys):
    argv = ["sample", small_run, "--prompt", "The ", "--max-new-tokens", "25", "--beam", "3"]
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    full = out[len("The "):-1]
    stop = next(c for c in full if c != full[0])  # a stop string that is not at the start
    rc, out, err = cli(capsys, *argv, "--stop", stop)
    assert rc == 0, err
    run = attnkit.load(small_run)
    model, tok = run.model, run.tokenizer
    assert stop in full and stop not in out and out.startswith("The ") and len(out) > 5
    # a one-character stop ends a beam as an EOS token would (the run's tokenizer has none)
    as_eos = beam_search(model, tok.encode("The "), beam_size=3, max_new_tokens=25,
                         eos_id=tok.encode(stop)[0])[0].tokens
    assert out == "The " + tok.decode(as_eos) + "\n"
    assert out == "The " + beam_generate(model, "The ", 25, tokenizer=tok, beam_size=3,
                                         stop=stop) + "\n"
    rc, out, err = cli(capsys, *argv, "--no-repeat-ngram", "2", "--repetition-penalty", "1.3")
    assert rc == 0, err
    pairs = bigrams(tok.encode(out[:-1]))
    assert len(set(pairs)) == len(pairs) and out != "The " + full + "\n"
    assert out == "The " + beam_generate(model, "The ", 25, tokenizer=tok, beam_size=3,
                                         no_repeat_ngram_size=2, repetition_penalty=1.3) + "\n"


@pytest.mark.parametrize("option", [["--temperature", "0.8"], ["--temperature", "0"],
                                    ["--top-k", "5"], ["--top-p", "0.9"], ["--min-p", "0.1"],
                                    ["--seed", "1"], ["--num-samples", "2"], ["--compile"]],
                         ids=lambda o: " ".join(o))
def test_sample_beam_refuses_sampling_only_options(small_run, capsys, option):
    refused(cli(capsys, "sample", small_run, "--beam", "2", *option),
            f"{option[0]} does not apply to --beam", f"drop {option[0]}")


def test_sample_beam_below_one_is_refused(small_run, capsys):
    refused(cli(capsys, "sample", small_run, "--beam", "0"), "--beam must be 1")
