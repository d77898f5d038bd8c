"""``data.loss_after``: score only the token after a marker (question=answer data), and the
2017 embedding scale that sinusoidal positions need."""

import math
import random
import string

import pytest
import torch

from attnkit.config import ModelConfig, config_from_dict
from attnkit.errors import AttnkitError
from attnkit.models import Decoder
from attnkit.train.tasks import LMTask


def recall_corpus(path, n=3000):
    rng = random.Random(0)
    path.write_text("".join(f"{k}{'x' * rng.randint(0, 5)}={k}\n"
                            for k in rng.choices(string.ascii_uppercase, k=n)), encoding="utf-8")
    return path


def task(env, marker):
    cfg = config_from_dict({"model": {"d_model": 32, "n_heads": 2, "n_layers": 1,
                                      "context_length": 32},
                            "data": {"path": str(recall_corpus(env / "qa.txt")),
                                     "loss_after": marker}})
    return LMTask(cfg, env / "run", resume=False)


def test_only_the_token_after_the_marker_is_scored(env):
    t = task(env, "=")
    batch = t.batch("train", 0, 0, 8, torch.device("cpu"))
    x, y = batch["input_ids"], batch["targets"]
    eq = t.tokenizer.encode("=")[0]
    assert (y[x != eq] == -100).all()
    scored = y[x == eq]
    assert len(scored) > 0 and (scored != -100).all()
    capitals = {t.tokenizer.encode(c)[0] for c in string.ascii_uppercase}
    assert set(scored.tolist()) <= capitals  # the answers, and nothing else
    assert "loss on the token after '='" in t.describe()


def test_without_a_marker_every_token_is_scored(env):
    batch = task(env, None).batch("train", 0, 0, 4, torch.device("cpu"))
    assert (batch["targets"] != -100).all()


@pytest.mark.parametrize("marker", ["=A", "#"])
def test_the_marker_must_be_one_known_token(env, marker):
    with pytest.raises(AttnkitError, match="must be exactly one token"):
        task(env, marker)


def test_sinusoidal_decoders_scale_their_embeddings():
    assert ModelConfig(pos="sinusoidal").scale_embeddings is True
    assert ModelConfig(pos="learned").scale_embeddings is False
    assert ModelConfig(pos="sinusoidal", scale_embeddings=False).scale_embeddings is False
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=500, d_model=64, n_heads=4, n_layers=1, context_length=16,
                      pos="sinusoidal")
    model = Decoder(cfg)
    assert model.emb_scale == math.sqrt(64)
    scaled = model.tok_emb.weight.std().item() * model.emb_scale
    assert 0.9 < scaled < 1.1  # unit scale, like the sinusoids it is added to
