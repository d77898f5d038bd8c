"""attnkit.backends: ``accelerate`` swaps classes and nothing else. Over the knobs of the
cached-equals-uncached tests, an accelerated copy of a model gives the plain model's logits,
its training loss and every gradient, and its greedy tokens; ``make_plain`` undoes the swap
exactly; ``plain`` (argument, ``ATTNKIT_BACKEND`` or ``--train.backend``) leaves the model as
written."""

import copy
import itertools

import pytest
import torch
from test_model import KV_HEADS, NORM_POSITION, POS
from torch import nn

from attnkit.backends import (
    SWAPS,
    accelerate,
    attention,
    backend_of,
    head,
    make_plain,
    onednn,
    resolve,
)
from attnkit.backends.attention import OneDNNAttention
from attnkit.backends.head import DecodeHead, TrainHead
from attnkit.backends.onednn import FAST_NUMEL, TRAIN_MACS, OneDNNLinear
from attnkit.config import EncoderConfig, LSTMConfig, ModelConfig, Seq2SeqConfig
from attnkit.config import resolve as resolve_run
from attnkit.errors import AttnkitError
from attnkit.generate import generate_ids
from attnkit.generate.beam import greedy_seq2seq
from attnkit.models import build_model
from attnkit.nn import Attention, OutputHead

needs_onednn = pytest.mark.skipif(not onednn.PACKING, reason="no oneDNN in this torch")

# 384 wide: a 384 x 384 projection is FAST_NUMEL (packed when decoding), 40 rows of it are past
# TRAIN_MACS (oneDNN when training); a 512 x 384 output layer is packed too
D, V, CTX = 384, 512, 24
assert D * D >= FAST_NUMEL and 40 * D * D >= TRAIN_MACS and V * D >= FAST_NUMEL
TOL = dict(atol=1e-5, rtol=1e-5)  # fp32 rounding: the products are summed in another order


def spy(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records the shape of its first argument."""
    calls = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(tuple(a[0].shape)) or real(*a, **k))
    return calls


def build(family: str = "decoder", **kw) -> nn.Module:
    torch.manual_seed(0)
    if family == "lstm":
        cfg = LSTMConfig(vocab_size=V, d_model=D, n_layers=2, context_length=CTX, **kw)
    else:
        base = dict(vocab_size=V, d_model=D, n_heads=4, context_length=CTX, dropout=0.0)
        layers = ({"n_encoder_layers": 1, "n_decoder_layers": 2} if family == "seq2seq"
                  else {"n_layers": 2})
        cfg = {"decoder": ModelConfig, "encoder": EncoderConfig,
               "seq2seq": Seq2SeqConfig}[family](**{**base, **layers, **kw})
    return build_model(cfg).eval()


@pytest.fixture(params=list(SWAPS))
def backend(request) -> str:
    """Each back-end of the table of swaps, where this torch has it: the matrix tests below
    check every one against the plain model."""
    if request.param == "onednn" and not onednn.PACKING:
        pytest.skip("no oneDNN in this torch")
    return request.param


def fast_copy(model: nn.Module, purpose: str, backend: str = "onednn") -> nn.Module:
    fast = accelerate(copy.deepcopy(model), purpose=purpose, backend=backend)
    assert backend_of(fast) == backend and backend_of(model) == "plain"
    return fast


def check_same_training(plain: nn.Module, fast: nn.Module, **inputs) -> torch.Tensor | None:
    """One forward and backward of each in training mode: the same loss, the same gradient
    of every parameter. Returns the accelerated model's logits (None where fused)."""
    results = []
    for model in (plain, fast):
        model.train()
        torch.manual_seed(0)  # dropout is 0, but whatever else draws gets the same numbers
        logits, loss = model(**inputs)
        loss.backward()
        results.append((logits, loss, {n: p.grad for n, p in model.named_parameters()}))
    (_, want, grads), (logits, loss, fast_grads) = results
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == grads.keys()
    for name, grad in grads.items():
        if grad is None:  # a head this input does not use
            assert fast_grads[name] is None, name
        else:
            torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    return logits


# ------------------------------------------------------------------ decoders (and the LSTM)

DECODER_KNOBS = [dict(pos=p, norm_position=n, n_kv_heads=kv)
                 for p, n, kv in itertools.product(POS, NORM_POSITION, KV_HEADS)]
# not relu: a pre-activation within rounding of 0 may take either side of the kink, and
# its unit's gradient with it (seen in 1 of 61k, for the same function)
DECODER_KNOBS += [dict(ffn=f, norm=n, bias=False, tie_embeddings=False, pos="rope", n_kv_heads=2)
                  for f, n in itertools.product(["gelu", "swiglu", "geglu"],
                                                ["layernorm", "rmsnorm"])]


def check_generating_family(plain: nn.Module, monkeypatch, backend: str) -> None:
    ids = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        full, _ = plain(ids)

    # decode: the full forward, and prefill + a chunk + one token at a time from the cache
    fast = fast_copy(plain, "decode", backend)
    packed = spy(monkeypatch, onednn, "pack")
    with torch.no_grad():
        torch.testing.assert_close(fast(ids)[0], full, **TOL)
    with torch.inference_mode():
        cache = fast.new_cache(2)
        pieces = [fast(ids[:, :7], cache=cache)[0], fast(ids[:, 7:11], cache=cache)[0]]
        pieces += [fast(ids[:, t:t + 1], cache=cache)[0] for t in range(11, 20)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)
        # the contract's way to the last row: hidden states, then the output layer on the
        # last position alone (2 rows: the packed path), or its argmax
        hidden = fast.hidden(ids)[:, -1]  # (B, C)
        torch.testing.assert_close(fast.lm_head(hidden), full[:, -1], **TOL)
        assert torch.equal(fast.lm_head.greedy(hidden), full[:, -1].argmax(-1))
    if backend == "onednn":  # the decode steps read the output layer through a packed copy
        assert isinstance(fast.lm_head, DecodeHead) and (V, D) in packed

    # greedy tokens, past the context (the window slides)
    prompt = ids[0, :5].tolist()
    want = list(generate_ids(plain, prompt, 22, temperature=0))
    assert list(generate_ids(fast, prompt, 22, temperature=0)) == want

    # train: the same loss and gradients
    fast = fast_copy(plain, "train", backend)
    targets = torch.randint(0, V, (2, 20))
    targets[:, :3] = -100
    logits = check_same_training(plain, fast, input_ids=ids, targets=targets)
    if backend == "onednn":  # the fused loss builds no logits
        assert isinstance(fast.lm_head, TrainHead) and logits is None
    # evaluation reads the logits: the accelerated model in eval mode returns them
    plain.eval(), fast.eval()
    with torch.no_grad():
        logits, loss = fast(ids, targets)
        torch.testing.assert_close(loss, plain(ids, targets)[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, full, **TOL)


@pytest.mark.parametrize("knobs", DECODER_KNOBS, ids=lambda k: "-".join(map(str, k.values())))
def test_accelerated_decoder_equals_the_plain_one(knobs, backend, monkeypatch):
    check_generating_family(build(**knobs), monkeypatch, backend)


@pytest.mark.parametrize("tie", [True, False])
def test_accelerated_lstm_equals_the_plain_one(tie, backend, monkeypatch):
    check_generating_family(build("lstm", tie_embeddings=tie), monkeypatch, backend)


@needs_onednn
def test_the_fast_paths_run(monkeypatch):
    """The oneDNN products, the fused loss and the packed (stacked q/k/v) decode weights are
    what the accelerated model runs, not merely its classes."""
    plain = build()
    fast = fast_copy(plain, "train").train()
    products = spy(monkeypatch, onednn, "onednn_linear")
    fused = spy(monkeypatch, head, "linear_cross_entropy")
    ids = torch.randint(0, V, (2, 20))
    _, loss = fast(ids, ids)
    loss.backward()
    assert fused == [(40, D)]  # the (B T, C) hidden states, no logits
    # the forward, the input gradient and the weight gradient of a 384 x 384 projection
    assert {(2, 20, D), (40, D), (D, 40)} <= set(products)

    fast = fast_copy(plain, "decode")
    packed = spy(monkeypatch, onednn, "pack")
    stacked = spy(monkeypatch, attention, "pack")
    with torch.inference_mode():
        cache = fast.new_cache(1)
        fast(ids[:1, :5], cache=cache)
        for _ in range(2):  # the second step reuses every packed copy
            fast(ids[:1, 5:6], cache=cache)
    assert stacked == [(3 * D, D)] * 2  # q, k and v as one matrix, in each of the 2 layers
    assert sorted(packed) == sorted([(D, D), (4 * D, D), (D, 4 * D)] * 2 + [(V, D)])

    with torch.no_grad():  # an update in place (an optimizer step), in both models
        for model in (plain, fast):
            for p in model.parameters():
                p.mul_(0.5)
        want, _ = plain(ids[:1, :6])
    with torch.inference_mode():
        cache = fast.new_cache(1)
        fast(ids[:1, :5], cache=cache)
        step, _ = fast(ids[:1, 5:6], cache=cache)
    assert len(stacked) == 4 and len(packed) == 14  # every copy made again, once
    torch.testing.assert_close(step[:, -1], want[:, -1], **TOL)


@needs_onednn
def test_training_through_the_block_causal_kernel(monkeypatch):
    """A context of 512 or more takes the block-causal attention kernel; loss and gradients
    are still the plain model's."""
    calls = spy(monkeypatch, attention.causal, "causal_attention")
    torch.manual_seed(0)
    plain = build_model(ModelConfig(vocab_size=64, d_model=64, n_heads=4, n_kv_heads=2,
                                    n_layers=1, context_length=520))
    fast = fast_copy(plain, "train")
    ids = torch.randint(0, 64, (1, 520))
    check_same_training(plain, fast, input_ids=ids, targets=ids)
    assert calls == [(1, 4, 520, 16)]


# ------------------------------------------------------------------ encoder, encoder-decoder

# every value of each knob of the decoders' matrix, not every combination (the layers are
# the decoders'; what is new here is the encoder's and the cross-attention's use of them)
KNOBS = [dict(pos=p, norm_position=n, n_kv_heads=kv)
         for p, (n, kv) in itertools.product(POS, [("post", 4), ("pre", 2), ("pre", 1)])][::2]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: "-".join(map(str, k.values())))
def test_accelerated_encoder_equals_the_plain_one(knobs, backend):
    plain = build("encoder", n_labels=2, type_vocab_size=2, **knobs)
    ids = torch.randint(0, V, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 14:] = 0
    fast = fast_copy(plain, "decode", backend)
    assert not any(isinstance(m, (TrainHead, DecodeHead)) for m in fast.modules())
    with torch.no_grad():
        for a, b in [(fast(ids, ids)[0], plain(ids, ids)[0]),  # masked-LM logits
                     (fast(ids, attention_mask=mask)[0], plain(ids, attention_mask=mask)[0]),
                     (fast.embed(ids, mask), plain.embed(ids, mask))]:
            torch.testing.assert_close(a, b, **TOL)
    targets = torch.full((2, 20), -100)
    targets[:, ::3] = ids[:, ::3]
    fast = fast_copy(plain, "train", backend)
    check_same_training(plain, fast, input_ids=ids, targets=targets, attention_mask=mask)
    plain.zero_grad(), fast.zero_grad()
    check_same_training(plain, fast, input_ids=ids, labels=torch.tensor([0, 1]),
                        attention_mask=mask)


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: "-".join(map(str, k.values())))
def test_accelerated_seq2seq_equals_the_plain_one(knobs, backend):
    plain = build("seq2seq", ffn="gelu", **knobs)  # not relu: see DECODER_KNOBS
    src = torch.randint(1, V, (2, 12))
    src_mask = torch.ones(2, 12, dtype=torch.long)
    src_mask[1, 9:] = 0
    tgt = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        full, _ = plain(tgt, src_ids=src, src_mask=src_mask)
    fast = fast_copy(plain, "decode", backend)
    with torch.inference_mode():
        torch.testing.assert_close(fast(tgt, src_ids=src, src_mask=src_mask)[0], full,
                                   **TOL)
        cache = fast.new_cache(2)
        pieces = [fast(tgt[:, :4], src_ids=src, src_mask=src_mask, cache=cache)[0]]
        pieces += [fast(tgt[:, t:t + 1], cache=cache)[0] for t in range(4, 10)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)
        greedy = dict(bos_id=1, eos_id=2, max_new_tokens=12)
        assert greedy_seq2seq(fast, src, src_mask, **greedy) == \
            greedy_seq2seq(plain, src, src_mask, **greedy)
    targets = tgt.clone()
    targets[1, 7:] = -100
    check_same_training(plain, fast_copy(plain, "train", backend), input_ids=tgt, targets=targets,
                        src_ids=src, src_mask=src_mask)


# ------------------------------------------------------------------ the swap itself

def classes(model: nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in model.named_modules()}


@needs_onednn
@pytest.mark.parametrize("family", ["decoder", "lstm", "encoder", "seq2seq"])
def test_make_plain_restores_the_exact_classes_and_state(family):
    model = build(family)
    before, state = classes(model), {k: v.clone() for k, v in model.state_dict().items()}
    attrs = {name: set(vars(m)) for name, m in model.named_modules()}
    accelerate(model, purpose="train")
    swapped = classes(model)
    assert all(swapped[n] is OneDNNLinear for n, c in before.items() if c is nn.Linear)
    assert all(swapped[n] is OneDNNAttention for n, c in before.items() if c is Attention)
    assert all(swapped[n] is TrainHead for n, c in before.items() if c is OutputHead)
    assert model.state_dict().keys() == state.keys()  # the same parameters, the same keys
    accelerate(model, purpose="decode")  # a second call switches purpose
    assert all(classes(model)[n] is DecodeHead for n, c in before.items() if c is OutputHead)
    if family in ("decoder", "lstm"):
        with torch.inference_mode():  # leaves packed copies behind
            generate_ids(model, [1, 2, 3], 3, temperature=0).__next__()
    assert make_plain(model) is model
    assert classes(model) == before and backend_of(model) == "plain"
    assert {name: set(vars(m)) for name, m in model.named_modules()} == attrs  # copies dropped
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    if family in ("decoder", "lstm"):
        assert model.lm_head.weight is model.tok_emb.weight  # still tied


def test_subclasses_are_left_as_they_are():
    """Only exact classes are swapped: a subclass has its own forward."""
    class Mine(nn.Linear):
        pass

    model = nn.Sequential(Mine(4, 4), nn.Linear(4, 4))
    accelerate(model, backend="onednn")
    assert type(model[0]) is Mine and type(model[1]) is OneDNNLinear
    assert type(make_plain(model)[1]) is nn.Linear


def test_plain_backend_and_the_environment_leave_the_model_as_written(monkeypatch):
    model = build()
    before = classes(model)
    assert accelerate(model, purpose="train", backend="plain") is model
    assert classes(model) == before
    monkeypatch.setenv("ATTNKIT_BACKEND", "plain")
    assert resolve("auto") == "plain"
    for purpose in ("train", "decode"):
        accelerate(model, purpose=purpose, backend="auto")
        assert classes(model) == before and backend_of(model) == "plain"
    if onednn.PACKING:  # an explicit back-end is not overridden
        assert backend_of(accelerate(model, backend="onednn")) == "onednn"
    monkeypatch.setenv("ATTNKIT_BACKEND", "fastest")
    with pytest.raises(AttnkitError, match="ATTNKIT_BACKEND='fastest'"):
        accelerate(model)


def test_unknown_backend_or_purpose_is_a_value_error():
    model = build()
    with pytest.raises(ValueError, match="unknown back-end 'cuda'"):
        accelerate(model, backend="cuda")
    with pytest.raises(ValueError, match="purpose must be one of train, decode"):
        accelerate(model, purpose="serve")
    assert backend_of(model) == "plain"


@needs_onednn
def test_the_trainer_trains_alike_with_either_backend(env):
    """``--train.backend=plain`` trains the model as written, ``auto`` the accelerated one:
    the same losses step by step."""
    from attnkit.train import Trainer

    losses = {}
    for backend in ("auto", "plain"):
        cfg = resolve_run(overrides={
            "model.n_layers": "1", "model.d_model": str(D), "model.n_heads": "4",
            "model.context_length": "32", "train.batch_size": "4", "train.steps": "3",
            "train.eval_batches": "1", "train.backend": backend})
        trainer = Trainer(cfg, env / backend, log=lambda *_: None)
        assert backend_of(trainer.model) == ("onednn" if backend == "auto" else "plain")
        losses[backend] = [trainer.train_step() for _ in range(3)]
    assert losses["auto"] == pytest.approx(losses["plain"], rel=1e-5)
