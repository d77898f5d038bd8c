"""Greedy decoding and beam search, for the encoder-decoder and for decoder-only models.

Beam search keeps the ``beam_size`` most probable partial sequences. All beams
of all sources run as one batch of ``B * beam_size`` rows through the model's
caches; after each step the caches follow the surviving beams with
``cache.reorder(rows)``. A hypothesis that emits EOS is set aside, scored by
its log-probability divided by GNMT's length penalty (Wu et al., 2016, eq. 14)

    lp(Y) = ((5 + |Y|) / 6) ** alpha        (|Y| counts the EOS; alpha 0: no penalty)

and a source is finished once ``beam_size`` hypotheses have ended (fairseq's
rule), or at ``max_new_tokens``. An EOS is only accepted from the best
``beam_size`` candidates of a step, so a finished hypothesis never outranks
better live ones at the moment it ends. A ``done`` test (a stop string in the
decoded text) ends a hypothesis the same way, its last token kept.

Repetition penalty and no-repeat n-grams (:func:`attnkit.generate.sampling.history_rules`,
as in sampling) apply to each beam's logits with that beam's own history, before the
log-softmax: a beam's score is its log-probability under the distribution the rules leave.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnkit.data.pairs import source_batch, special_ids
from attnkit.errors import AttnkitError
from attnkit.generate.options import check_rules
from attnkit.generate.sampling import history_rules
from attnkit.generate.steps import require
from attnkit.generate.stops import cut_at_stop, first_stop, need_tokenizer, stop_strings


@dataclass
class Hypothesis:
    """A decoded sequence (without BOS/EOS) and its length-normalised log-probability."""

    tokens: list[int]
    score: float


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ((5 + length) / 6) ** alpha; dividing a log-probability by it favours longer
    sequences as alpha grows."""
    return ((5 + length) / 6) ** alpha


class _Eval:
    """Eval mode inside, the previous mode restored after (also on errors)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


# --- the encoder-decoder ----------------------------------------------------------------------

@torch.no_grad()
def greedy_seq2seq(model: torch.nn.Module, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None,
                   *, bos_id: int, eos_id: int, max_new_tokens: int) -> list[list[int]]:
    """The most probable next token, step by step, for every source row of ``src_ids`` (B, S);
    returns the token lists without EOS. The source is encoded once."""
    B = src_ids.shape[0]
    with _Eval(model):
        cache = model.new_cache(B, max_len=max_new_tokens)
        tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=src_ids.device)
        logits, _ = model(tokens, src_ids=src_ids, src_mask=src_mask, cache=cache)
        out, done = [], torch.zeros(B, dtype=torch.bool, device=src_ids.device)
        for t in range(max_new_tokens):
            nxt = logits[:, -1].argmax(dim=-1).masked_fill(done, eos_id)  # (B,)
            out.append(nxt)
            done |= nxt == eos_id
            if bool(done.all()) or t == max_new_tokens - 1:
                break
            logits, _ = model(nxt[:, None], cache=cache)
    rows = torch.stack(out, dim=1).tolist() if out else [[] for _ in range(B)]
    return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]


@torch.no_grad()
def beam_search_seq2seq(model: torch.nn.Module, src_ids: torch.Tensor,
                        src_mask: torch.Tensor | None = None, *, bos_id: int, eos_id: int,
                        beam_size: int = 4, max_new_tokens: int, length_penalty: float = 0.0,
                        n_best: int = 1) -> list[list[Hypothesis]]:
    """For every source row of ``src_ids`` (B, S), its ``n_best`` hypotheses, best first."""
    B = src_ids.shape[0]
    with _Eval(model):
        cache = model.new_cache(B, max_len=max_new_tokens)
        bos = torch.full((B, 1), bos_id, dtype=torch.long, device=src_ids.device)
        logits, _ = model(bos, src_ids=src_ids, src_mask=src_mask, cache=cache)

        def step(tokens: torch.Tensor) -> torch.Tensor:
            return model(tokens, cache=cache)[0][:, -1].float()

        return _beam_search(step, logits[:, -1].float(), cache, beam_size, eos_id,
                            max_new_tokens, length_penalty, n_best)


# --- decoder-only models ----------------------------------------------------------------------

@torch.no_grad()
def beam_search(model: torch.nn.Module, prompt_ids: list[int], *, beam_size: int = 4,
                max_new_tokens: int = 50, length_penalty: float = 0.0, eos_id: int | None = None,
                n_best: int = 1, repetition_penalty: float | None = None,
                no_repeat_ngram_size: int | None = None,
                done: Callable[[list[int]], bool] | None = None) -> list[Hypothesis]:
    """Continuations of ``prompt_ids`` by a decoder-only model (one with ``new_cache`` and
    ``cache=``), best first. Without ``eos_id`` or ``done`` every beam runs ``max_new_tokens``
    tokens. ``done(tokens)`` (the new tokens so far) ends a beam like an EOS but keeps its
    last token; the rules see the prompt and the beam's tokens, as in sampling."""
    require(model, "generates", "beam search")
    check_rules(None, repetition_penalty, no_repeat_ngram_size)
    if not prompt_ids:
        raise AttnkitError("the prompt is empty after tokenization (give at least one character)")
    cfg = model.cfg
    if getattr(cfg, "pos", None) == "learned" and len(prompt_ids) + max_new_tokens > cfg.context_length:
        raise AttnkitError(f"prompt ({len(prompt_ids)} tokens) plus {max_new_tokens} new tokens "
                           f"exceed the model's context of {cfg.context_length} (shorten either)")
    device = next(model.parameters()).device
    with _Eval(model):
        cache = model.new_cache(1, max_len=len(prompt_ids) + max_new_tokens)
        logits, _ = model(torch.tensor([prompt_ids], device=device), cache=cache)

        def step(tokens: torch.Tensor) -> torch.Tensor:
            return model(tokens, cache=cache)[0][:, -1].float()

        return _beam_search(step, logits[:, -1].float(), cache, beam_size, eos_id,
                            max_new_tokens, length_penalty, n_best, prompts=[list(prompt_ids)],
                            rep_penalty=repetition_penalty, ngram=no_repeat_ngram_size,
                            done=done)[0]


def beam_generate(model: torch.nn.Module, prompt: str, max_new_tokens: int = 50, *,
                  tokenizer=None, beam_size: int = 4, length_penalty: float = 0.0,
                  repetition_penalty: float | None = None,
                  no_repeat_ngram_size: int | None = None,
                  stop: Sequence[str] | str | None = None) -> str:
    """The best beam's continuation of ``prompt`` as text: :func:`beam_search` with the
    tokenizer's ``eos`` (if it has one), ending a beam whose text contains a stop string
    and cutting the text before the first one, as :func:`attnkit.generate.stream` does."""
    tokenizer = need_tokenizer(tokenizer)
    stops = stop_strings(stop)
    done = None
    if stops:
        def done(tokens: list[int]) -> bool:
            return first_stop(tokenizer.decode(tokens), stops) >= 0
    eos = getattr(tokenizer, "special_tokens", {}).get("eos")
    prompt_ids = tokenizer.encode(prompt)
    if max_new_tokens == 0 and prompt_ids:  # nothing to search for, as when sampling
        return ""
    best = beam_search(model, prompt_ids, beam_size=beam_size,
                       max_new_tokens=max_new_tokens, length_penalty=length_penalty, eos_id=eos,
                       repetition_penalty=repetition_penalty,
                       no_repeat_ngram_size=no_repeat_ngram_size, done=done)[0]
    return cut_at_stop(tokenizer.decode(best.tokens), stops)


# --- the search itself ------------------------------------------------------------------------

def _beam_search(step: Callable[[torch.Tensor], torch.Tensor], first: torch.Tensor, cache,
                 k: int, eos_id: int | None, max_new_tokens: int, alpha: float, n_best: int,
                 *, prompts: list[list[int]] | None = None, rep_penalty: float | None = None,
                 ngram: int | None = None, done: Callable[[list[int]], bool] | None = None
                 ) -> list[list[Hypothesis]]:
    """Beam search from ``first`` (B, V), the logits after the prompt or BOS, with ``cache``
    holding B rows; ``step(tokens (B*k, 1)) -> logits (B*k, V)`` runs one decoding step.
    ``prompts`` (one id list per source, default none) begin each beam's history for the
    rules; ``done(tokens)`` ends a beam as EOS does, its last token kept."""
    if k < 1:
        raise AttnkitError(f"beam size must be at least 1, got {k}")
    if max_new_tokens < 1:
        raise AttnkitError(f"max new tokens must be at least 1, got {max_new_tokens}")
    B, V = first.shape
    device = first.device
    prompts = prompts or [[] for _ in range(B)]
    rules = rep_penalty not in (None, 1.0) or bool(ngram)

    def log_probs(logits: torch.Tensor, histories: list[list[int]]) -> torch.Tensor:
        if rules:
            logits = history_rules(logits, histories, rep_penalty, ngram)
        return F.log_softmax(logits, dim=-1)

    cache.reorder(torch.arange(B, device=device).repeat_interleave(k))  # every beam a copy
    logprobs = log_probs(first, prompts).repeat_interleave(k, dim=0)  # (B*k, V)
    # Only beam 0 is live at the start, so the first step picks k distinct tokens.
    scores = torch.full((B, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    seqs: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(B)]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    over = [False] * B  # per source: no more steps
    n_cand = min(2 * k, k * V)  # enough that k live candidates remain even if k end in EOS
    for t in range(max_new_tokens):
        last = t == max_new_tokens - 1
        cand = scores[:, :, None] + logprobs.view(B, k, V)  # (B, k, V)
        top_scores, top_idx = cand.view(B, k * V).topk(n_cand, dim=-1)  # (B, 2k)
        top_scores, top_beam, top_tok = top_scores.tolist(), (top_idx // V).tolist(), \
            (top_idx % V).tolist()
        rows, tokens, new_scores, new_seqs = [], [], [], []
        for b in range(B):
            live: list[tuple[int, int, float]] = []  # (beam, token, score)
            if not over[b]:
                for rank in range(n_cand):
                    s, j, tok = top_scores[b][rank], top_beam[b][rank], top_tok[b][rank]
                    if s == float("-inf"):
                        break
                    extended = seqs[b][j] + [tok]
                    # EOS ends a beam (EOS itself not kept); so does ``done``, its token kept
                    if tok == eos_id or (done is not None and done(extended)):
                        if rank < k:
                            kept = seqs[b][j] if tok == eos_id else extended
                            finished[b].append(Hypothesis(kept, s / length_penalty(
                                len(extended), alpha)))
                    else:
                        live.append((j, tok, s))
                        if len(live) == k:
                            break
                if last:  # out of length: the live beams end here, unfinished
                    finished[b] += [Hypothesis(seqs[b][j] + [tok], s / length_penalty(
                        len(seqs[b][j]) + 1, alpha)) for j, tok, s in live]
                if last or len(finished[b]) >= k or not live:
                    over[b] = True
            # A finished source (or one with fewer than k live beams) keeps dummy rows.
            live += [(0, eos_id if eos_id is not None else 0, float("-inf"))] * (k - len(live))
            for j, tok, s in live:
                rows.append(b * k + j)
                tokens.append(tok)
                new_scores.append(s)
                new_seqs.append(seqs[b][j] + [tok])
        if all(over):
            break
        seqs = [new_seqs[b * k:(b + 1) * k] for b in range(B)]
        scores = torch.tensor(new_scores, device=device).view(B, k)
        cache.reorder(torch.tensor(rows, device=device))
        histories = [prompts[r // k] + seq for r, seq in enumerate(new_seqs)] if rules else []
        logprobs = log_probs(step(torch.tensor(tokens, device=device)[:, None]), histories)
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]


# --- text in, text out ------------------------------------------------------------------------

def translate_ids(model: torch.nn.Module, sources: list[list[int]], *, pad_id: int, bos_id: int,
                  eos_id: int, beam_size: int = 1, length_penalty: float = 0.6,
                  max_new_tokens: int | None = None, batch_size: int = 64) -> list[list[int]]:
    """Output token ids for each source (each a list of ids ending in EOS), in batches;
    greedy when ``beam_size`` is 1."""
    cfg = model.cfg
    max_new_tokens = max_new_tokens or cfg.context_length
    if max_new_tokens < 1:
        raise AttnkitError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if beam_size < 1:
        raise AttnkitError(f"--beam must be at least 1, got {beam_size}")
    if cfg.pos == "learned":
        longest = max((len(s) for s in sources), default=0)
        if longest > cfg.context_length or max_new_tokens > cfg.context_length:
            raise AttnkitError(f"a source of {longest} tokens or {max_new_tokens} new tokens "
                               f"exceed the model's learned position table of "
                               f"{cfg.context_length} (shorten the input or --max-new-tokens)")
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for i in range(0, len(sources), batch_size):
        src_ids, src_mask = source_batch(sources[i:i + batch_size], pad_id, device)
        if beam_size == 1:
            out += greedy_seq2seq(model, src_ids, src_mask, bos_id=bos_id, eos_id=eos_id,
                                  max_new_tokens=max_new_tokens)
        else:
            best = beam_search_seq2seq(model, src_ids, src_mask, bos_id=bos_id, eos_id=eos_id,
                                       beam_size=beam_size, max_new_tokens=max_new_tokens,
                                       length_penalty=length_penalty)
            out += [hyps[0].tokens for hyps in best]
    return out


def decoding_ids(tokenizer, token_ids: dict[str, int | None] | None = None
                 ) -> tuple[int, int, int, int | None]:
    """(pad, decoder start, eos, source bos) for :func:`translate`.

    A converted BART run (``token_ids``, ``Loaded.token_ids`` from its ``config.json``) uses its config's
    ids as ``generate`` does: decoding starts from ``decoder_start`` (BART's is EOS, not the
    tokenizer's ``<s>``), and each source is framed ``bos ... eos`` as BART's tokenizer frames
    it. An id the config leaves null falls back as in ``generate`` (``decoder_start`` to
    ``bos``), then to the tokenizer's. A run attnkit trained has no ``token_ids``: the
    tokenizer's pad/bos/eos, with no bos before the source (it was trained on text + EOS)."""
    ids = token_ids
    if ids is None:
        pad_id, bos_id, eos_id = special_ids(tokenizer)
        return pad_id, bos_id, eos_id, None
    own = getattr(tokenizer, "special_tokens", {}) or {}

    def first(*values: int | None) -> int | None:
        return next((v for v in values if v is not None), None)

    pad_id, start_id, eos_id = (first(ids.get("pad"), own.get("pad")),
                                first(ids.get("decoder_start"), ids.get("bos"), own.get("bos")),
                                first(ids.get("eos"), own.get("eos")))
    if None in (pad_id, start_id, eos_id):  # neither the config nor the tokenizer names one
        special_ids(tokenizer)  # raises the error naming what the tokenizer lacks
    return pad_id, start_id, eos_id, first(ids.get("bos"), own.get("bos"))


def translate(model: torch.nn.Module, texts: list[str], *, tokenizer=None,
              token_ids: dict[str, int | None] | None = None, beam_size: int = 1,
              length_penalty: float = 0.6, max_new_tokens: int | None = None,
              batch_size: int = 64) -> list[str]:
    """Translate each of ``texts`` with a trained encoder-decoder (``run = attnkit.load(path)``:
    ``translate(run.model, texts, tokenizer=run.tokenizer, token_ids=run.token_ids)``), with
    the ids :func:`decoding_ids` gives."""
    require(model, "translates", "translation")
    tokenizer = need_tokenizer(tokenizer)
    pad_id, bos_id, eos_id, src_bos = decoding_ids(tokenizer, token_ids)
    sources = []
    for text in texts:
        try:
            text_ids = tokenizer.encode(text)
        except AttnkitError as e:
            raise AttnkitError(f"cannot translate {text[:40]!r}: {e}") from None
        if src_bos is None:  # attnkit's own runs (or no bos at all): text + EOS
            sources.append(text_ids + [eos_id])
            continue
        # BART's framing <s> ... </s>, not doubled by a tokenizer whose encode adds them.
        body = text_ids[1:] if text_ids[:1] == [src_bos] else text_ids
        body = body[:-1] if body[-1:] == [eos_id] else body
        sources.append([src_bos] + body + [eos_id])
    ids = translate_ids(model, sources, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id,
                        beam_size=beam_size, length_penalty=length_penalty,
                        max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [tokenizer.decode(row) for row in ids]
