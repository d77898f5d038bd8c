"""The decoder: contract, cached == uncached decoding for every knob, eager == SDPA."""

import itertools

import pytest
import torch

from attnkit.config import ModelConfig
from attnkit.models import Decoder
from attnkit.nn import RMSNorm, ffn_hidden_size
from attnkit.nn.positional import alibi_slopes, sinusoid_table

POS = ["learned", "sinusoidal", "rope", "alibi", "none"]
NORM_POSITION = ["pre", "post"]
KV_HEADS = [4, 2, 1]  # MHA, GQA, MQA with 4 query heads


def tiny(**kw) -> Decoder:
    base = dict(vocab_size=37, context_length=24, d_model=32, n_layers=2, n_heads=4)
    base.update(kw)
    torch.manual_seed(0)
    return Decoder(ModelConfig(**base)).eval()


def test_contract_logits_and_loss():
    model = tiny()
    ids = torch.randint(0, 37, (3, 10))
    logits, loss = model(ids)
    assert logits.shape == (3, 10, 37) and loss is None
    logits, loss = model(ids, targets=ids)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # an untrained model predicts roughly uniformly: loss near ln(V)
    assert abs(loss.item() - torch.log(torch.tensor(37.0)).item()) < 0.5


def test_ignore_index_excluded_from_loss():
    model = tiny()
    ids = torch.randint(0, 37, (1, 8))
    targets = ids.clone()
    targets[:, 4:] = -100
    _, partial = model(ids, targets)
    logits, _ = model(ids)
    expected = torch.nn.functional.cross_entropy(logits[0, :4], ids[0, :4])
    torch.testing.assert_close(partial, expected)


@pytest.mark.parametrize("pos,norm_position,n_kv_heads",
                         list(itertools.product(POS, NORM_POSITION, KV_HEADS)))
def test_cached_equals_uncached(pos, norm_position, n_kv_heads):
    """Prefill a prompt, then decode one token at a time: the logits must match a full forward."""
    model = tiny(pos=pos, norm_position=norm_position, n_kv_heads=n_kv_heads)
    ids = torch.randint(0, 37, (2, 20))
    full, _ = model(ids)
    cache = model.new_cache(batch_size=2)
    pieces = [model(ids[:, :7], cache=cache)[0]]  # prefill 7 tokens
    pieces.append(model(ids[:, 7:11], cache=cache)[0])  # a chunk of 4 on top of the cache
    for t in range(11, 20):  # then one at a time
        pieces.append(model(ids[:, t:t + 1], cache=cache)[0])
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ffn", ["gelu", "relu", "swiglu", "geglu"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_cached_equals_uncached_other_knobs(ffn, norm):
    model = tiny(ffn=ffn, norm=norm, bias=False, tie_embeddings=False, pos="rope", n_kv_heads=2)
    ids = torch.randint(0, 37, (1, 12))
    full, _ = model(ids)
    cache = model.new_cache(1)
    inc = torch.cat([model(ids[:, :5], cache=cache)[0]]
                    + [model(ids[:, t:t + 1], cache=cache)[0] for t in range(5, 12)], dim=1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("n_kv_heads", [4, 1])
def test_eager_path_matches_sdpa_and_returns_weights(pos, n_kv_heads):
    model = tiny(pos=pos, n_kv_heads=n_kv_heads)
    ids = torch.randint(0, 37, (2, 16))
    sdpa, _ = model(ids)
    hidden, weights = model.hidden_states(ids, need_weights=True)
    torch.testing.assert_close(model.lm_head(hidden), sdpa, atol=1e-5, rtol=0)
    assert len(weights) == 2 and weights[0].shape == (2, 4, 16, 16)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, 4, 16))
    assert torch.all(weights[0].triu(diagonal=1) == 0), "causal: no weight on future tokens"
    eager_model = tiny(pos=pos, n_kv_heads=n_kv_heads, attention="eager")
    torch.testing.assert_close(eager_model(ids)[0], sdpa, atol=1e-5, rtol=0)


def test_changing_a_future_token_does_not_change_the_past():
    model = tiny(pos="alibi")
    ids = torch.randint(0, 37, (1, 10))
    other = ids.clone()
    other[0, 7] = (other[0, 7] + 1) % 37
    torch.testing.assert_close(model(ids)[0][:, :7], model(other)[0][:, :7])


def test_tied_and_untied_embeddings():
    tied, untied = tiny(tie_embeddings=True), tiny(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 37 * 32


def test_post_ln_has_no_final_norm_and_no_bias_option():
    post = tiny(norm_position="post")
    assert isinstance(post.final_norm, torch.nn.Identity)
    nobias = tiny(bias=False, norm="rmsnorm")
    assert all(not n.endswith("bias") for n, _ in nobias.named_parameters())


def test_glu_hidden_width_keeps_parameters_close():
    assert ffn_hidden_size(128, "gelu") == 512
    glu = ffn_hidden_size(128, "swiglu")
    assert glu % 32 == 0 and abs(3 * glu - 2 * 512) <= 3 * 32


def test_gqa_has_fewer_kv_parameters():
    mha, mqa = tiny(n_kv_heads=4), tiny(n_kv_heads=1)
    assert mqa.blocks[0].attn.k_proj.weight.shape == (8, 32)
    assert mha.num_params() > mqa.num_params()


def test_learned_positions_refuse_sequences_beyond_the_table():
    model = tiny(pos="learned")
    with pytest.raises(ValueError, match="exceeds the learned position table"):
        model(torch.zeros(1, 25, dtype=torch.long))


def test_rope_and_sinusoidal_extrapolate_beyond_context():
    for pos in ("rope", "sinusoidal", "alibi", "none"):
        logits, _ = tiny(pos=pos)(torch.zeros(1, 40, dtype=torch.long))
        assert logits.shape == (1, 40, 37)


def test_rmsnorm_normalises_rms():
    x = torch.randn(4, 16) * 5
    y = RMSNorm(16)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4), atol=1e-4, rtol=0)


def test_alibi_slopes_match_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert alibi_slopes(6).shape == (6,)


def test_sinusoid_table_first_values():
    t = sinusoid_table(3, 4)
    torch.testing.assert_close(t[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(t[1, 0], torch.sin(torch.tensor(1.0)))


def test_gradients_reach_every_parameter():
    model = tiny(pos="learned").train()
    ids = torch.randint(0, 37, (2, 12))
    model(ids, ids)[1].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("style", ["gpt2", "llama", "original"])
@pytest.mark.parametrize("size", ["tiny", "mini"])
def test_presets_build_and_train_a_step(style, size):
    from attnkit.config import expand_presets

    cfg = ModelConfig(**expand_presets({"style": style, "size": size, "vocab_size": 50}))
    model = Decoder(cfg)
    ids = torch.randint(0, 50, (1, 16))
    model(ids, ids)[1].backward()
    if style == "llama":
        assert cfg.n_kv_heads == cfg.n_heads // 2 and cfg.pos == "rope" and not cfg.bias


def test_gpt2_124m_preset_has_gpt2_small_parameter_count():
    from attnkit.config import expand_presets

    cfg = ModelConfig(**expand_presets({"style": "gpt2", "size": "gpt2-124m", "vocab_size": 50257}))
    with torch.device("meta"):  # shapes only: no memory, no time
        model = Decoder(cfg)
    # GPT-2 small: 124,439,808 parameters with the position table, tied embeddings.
    assert model.num_params(non_embedding=False) == 124_439_808
