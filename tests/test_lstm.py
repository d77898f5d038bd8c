"""The LSTM baseline honours the model contract and trains/samples through the same commands."""

import torch

from attnkit.cli import main
from attnkit.config import LSTMConfig, config_from_dict
from attnkit.models import LSTMLanguageModel, build_model


def tiny() -> LSTMLanguageModel:
    torch.manual_seed(0)
    return LSTMLanguageModel(LSTMConfig(vocab_size=23, d_model=16, n_layers=2)).eval()


def test_contract_and_state_equals_full_forward():
    model = tiny()
    ids = torch.randint(0, 23, (2, 12))
    full, loss = model(ids, ids)
    assert full.shape == (2, 12, 23) and loss.ndim == 0
    cache = model.new_cache(2)
    inc = torch.cat([model(ids[:, :5], cache=cache)[0]]
                    + [model(ids[:, t:t + 1], cache=cache)[0] for t in range(5, 12)], dim=1)
    assert cache.length == 12
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = LSTMLanguageModel(LSTMConfig(vocab_size=11, d_model=32, n_layers=1))
    ids = torch.randint(0, 11, (4, 16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_family_config_builds_the_lstm():
    cfg = config_from_dict({"model": {"family": "lstm", "vocab_size": 9, "n_layers": 1}})
    assert isinstance(cfg.model, LSTMConfig)
    assert isinstance(build_model(cfg.model), LSTMLanguageModel)


def test_train_and_sample_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    rc = main(["train", "--model.family=lstm", "--model.d_model=32", "--model.n_layers=1",
               "--model.context_length=32", "--train.steps=3", "--train.batch_size=4",
               "--train.eval_batches=2", "--no-samples", "--out", "run"])
    assert rc == 0
    assert "LSTM, 1 layers" in capsys.readouterr().out
    rc = main(["sample", "run", "--prompt", "The ", "--max-new-tokens", "40", "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("The ") and len(out) > 30
