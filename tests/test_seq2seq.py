"""The encoder-decoder end to end: model contract, padding, caches, data, task, commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_cli import cli

import attnkit
from attnkit.config import Seq2SeqConfig, resolve
from attnkit.data.pairs import load_parallel, read_pairs, source_batch, split_pairs
from attnkit.data.synthetic import SYNTHETIC, synthetic_splits
from attnkit.errors import AttnkitError
from attnkit.models import Seq2Seq, build_model
from attnkit.nn import Attention
from attnkit.tokenizers import load_tokenizer
from attnkit.train import Trainer
from attnkit.weights import model_state

V = 23


def make(**kw) -> Seq2Seq:
    torch.manual_seed(0)
    base = dict(vocab_size=V, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
                context_length=32, dropout=0.0)
    return build_model(Seq2SeqConfig(**{**base, **kw})).eval()


def padded_source(B: int = 3, S: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sources of lengths S, S-3, S-5 ..., right-padded with id 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = [max(1, S - 3 * i) for i in range(B)]
    seqs = [torch.randint(1, V, (n,), generator=g).tolist() for n in lengths]
    return source_batch(seqs, pad_id=0)


# --- the model --------------------------------------------------------------------------------

def test_forward_backward_shapes_and_registry():
    model = make().train()
    src, mask = padded_source()
    tgt = torch.randint(0, V, (3, 6))
    targets = tgt.clone()
    targets[2, 4:] = -100
    logits, loss = model(tgt, targets, src_ids=src, src_mask=mask)
    assert logits.shape == (3, 6, V) and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    logits, loss = model(tgt, src_ids=src)  # the family contract: targets optional
    assert loss is None and logits.shape == (3, 6, V)
    assert model.encode(src, mask).shape == (3, 9, 32)


def test_source_is_required():
    with pytest.raises(ValueError, match="src_ids"):
        make()(torch.zeros(1, 3, dtype=torch.long))


@pytest.mark.parametrize("pos", ["sinusoidal", "learned", "rope", "alibi", "none"])
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_extra_source_padding_changes_nothing(pos, norm_position):
    model = make(pos=pos, norm_position=norm_position)
    src, mask = padded_source()
    tgt = torch.randint(0, V, (3, 5))
    ref = model(tgt, src_ids=src, src_mask=mask)[0]
    more = torch.cat([src, torch.full((3, 4), 7)], dim=1)  # garbage in the padding, not just 0
    more_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(tgt, src_ids=more, src_mask=more_mask)[0], ref,
                               atol=1e-5, rtol=1e-5)
    # A row alone, unpadded, gives what it gave inside the padded batch.
    n = int(mask[2].sum())
    alone = model(tgt[2:], src_ids=src[2:, :n])[0]
    torch.testing.assert_close(alone, ref[2:], atol=1e-5, rtol=1e-5)


def test_overfits_one_batch():
    model = make(label_smoothing=0.0).train()
    src, mask = padded_source(B=4, S=6)
    tgt = src.flip(1)
    inputs, targets = tgt[:, :-1], tgt[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(80):
        _, loss = model(inputs, targets, src_ids=src, src_mask=mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


KNOBS = [(pos, np_, kv) for pos in ["sinusoidal", "learned", "rope", "alibi", "none"]
         for np_ in ["post", "pre"] for kv in [4, 2, 1]]


@pytest.mark.parametrize("pos,norm_position,n_kv_heads", KNOBS)
def test_cached_decoding_equals_full_forward(pos, norm_position, n_kv_heads):
    model = make(pos=pos, norm_position=norm_position, n_kv_heads=n_kv_heads)
    src, mask = padded_source(B=2)
    tgt = torch.randint(0, V, (2, 12))
    full = model(tgt, src_ids=src, src_mask=mask)[0]
    cache = model.new_cache(2)
    pieces = [model(tgt[:, :5], src_ids=src, src_mask=mask, cache=cache)[0]]  # prefill 5
    assert cache.has_memory
    # From here on the source is never passed: cross-attention reads the cache alone.
    pieces.append(model(tgt[:, 5:8], cache=cache)[0])  # a chunk of 3 on top of the cache
    pieces += [model(tgt[:, t:t + 1], cache=cache)[0] for t in range(8, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ffn,norm", [("swiglu", "rmsnorm"), ("gelu", "layernorm")])
def test_cached_equals_uncached_other_knobs_and_eager(ffn, norm):
    model = make(ffn=ffn, norm=norm, bias=False, attention="eager", embedding_norm=True,
                 scale_embeddings=False, share_embeddings=False)
    src, mask = padded_source(B=2)
    tgt = torch.randint(0, V, (2, 7))
    memory = model.encode(src, mask)
    full = model.decode(tgt, memory, mask)
    cache = model.new_cache(2)
    steps = [model.decode(tgt[:, :1], memory, mask, cache=cache)]
    steps += [model.decode(tgt[:, t:t + 1], None, cache=cache) for t in range(1, 7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_agree_with_padding():
    sdpa = make(n_kv_heads=2)
    eager = make(n_kv_heads=2, attention="eager")
    src, mask = padded_source()
    tgt = torch.randint(0, V, (3, 5))
    torch.testing.assert_close(eager(tgt, src_ids=src, src_mask=mask)[0],
                               sdpa(tgt, src_ids=src, src_mask=mask)[0], atol=1e-5, rtol=1e-5)
    maps = sdpa.attention_maps(src, tgt, mask)
    assert [len(maps[k]) for k in ("encoder", "decoder", "cross")] == [2, 2, 2]
    cross = maps["cross"][0]  # (B, nh, T, S): no weight on padded source positions
    assert cross.shape == (3, 4, 5, 9)
    assert cross.masked_select(~mask[:, None, None, :]).abs().max() == 0
    torch.testing.assert_close(cross.sum(-1), torch.ones(3, 4, 5))


def test_attention_key_padding_mask_alone():
    torch.manual_seed(0)
    attn = Attention(16, 4, 2, causal=True).eval()
    x = torch.randn(2, 6, 16)
    keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out, _ = attn(x, key_padding_mask=keep)
    torch.testing.assert_close(out[:, :4], attn(x[:, :4])[0][:, :4], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[0], attn(x[:1])[0][0], atol=1e-6, rtol=1e-6)


def test_shared_embeddings_are_one_tensor():
    model = make()
    assert model.src_emb.weight is model.tgt_emb.weight is model.lm_head.weight
    state = model_state(model)  # what a checkpoint stores: the matrix once
    assert sum(t.shape == (V, 32) for t in state.values()) == 1
    untied = make(share_embeddings=False)
    w = [untied.src_emb.weight, untied.tgt_emb.weight, untied.lm_head.weight]
    assert len({id(t) for t in w}) == 3
    assert untied.num_params() - model.num_params() == 2 * V * 32


def test_scaled_embeddings_have_unit_variance():
    model = make(d_model=64)
    scaled = model.src_emb.weight * model.emb_scale
    assert 0.8 < scaled.std().item() < 1.2
    assert make(scale_embeddings=False).emb_scale == 1.0


def test_label_smoothing_is_the_paper_mixture():
    eps = 0.1
    model = make(label_smoothing=eps)
    src, mask = padded_source()
    tgt = torch.randint(0, V, (3, 6))
    targets = tgt.clone()
    targets[0, 3:] = -100
    logits, loss = model(tgt, targets, src_ids=src, src_mask=mask)
    logp = F.log_softmax(logits.float(), -1)[targets != -100]  # (N, V)
    nll = -logp.gather(1, targets[targets != -100][:, None]).mean()
    uniform = -logp.mean()  # cross-entropy against the uniform distribution
    torch.testing.assert_close(loss, (1 - eps) * nll + eps * uniform)
    plain = make(label_smoothing=0.0)(tgt, targets, src_ids=src, src_mask=mask)[1]
    torch.testing.assert_close(plain, nll)
    assert loss.item() != pytest.approx(plain.item())


def test_learned_positions_refuse_long_sequences():
    model = make(pos="learned", context_length=8)
    with pytest.raises(ValueError, match="learned position"):
        model(torch.zeros(1, 3, dtype=torch.long), src_ids=torch.zeros(1, 9, dtype=torch.long))


# --- data -------------------------------------------------------------------------------------

def test_tsv_and_jsonl(tmp_path):
    (tmp_path / "a.tsv").write_text("abc\tcba\n\nhello world\tdlrow olleh\r\n")
    assert read_pairs(tmp_path / "a.tsv") == [("abc", "cba"), ("hello world", "dlrow olleh")]
    (tmp_path / "a.jsonl").write_text('{"source": "x", "target": "y"}\n'
                                      + json.dumps({"source": "ü\tz", "target": "2"}) + "\n")
    assert read_pairs(tmp_path / "a.jsonl") == [("x", "y"), ("ü\tz", "2")]


@pytest.mark.parametrize("name,content,message", [
    ("bad.tsv", "a\tb\nno tab here\n", r"bad.tsv:2: no tab"),
    ("bad.tsv", "a\tb\tc\n", r"bad.tsv:1: 2 tabs"),
    ("bad.tsv", "a\tb\n\t x\n", r"bad.tsv:2: empty source"),
    ("bad.tsv", "a\t \n", r"bad.tsv:1: empty target"),
    ("bad.tsv", "\n\n", r"bad.tsv holds no pairs"),
    ("bad.jsonl", '{"source": "a", "target": "b"}\n{"source": "a", \n', r"bad.jsonl:2: not valid JSON"),
    ("bad.jsonl", '["a", "b"]\n', r'bad.jsonl:1: expected an object with string "source"'),
    ("bad.jsonl", '{"source": "a", "target": 3}\n', r"bad.jsonl:1: expected an object"),
])
def test_malformed_pairs_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(AttnkitError, match=message) as e:
        read_pairs(tmp_path / name)
    assert "\n" not in str(e.value)


def test_file_split_is_deterministic_and_folder_files_are_used(tmp_path):
    lines = [f"s{i}\tt{i}" for i in range(100)]
    (tmp_path / "all.tsv").write_text("\n".join(lines))
    a, b = load_parallel(str(tmp_path / "all.tsv")), load_parallel(str(tmp_path / "all.tsv"))
    assert (a.train, a.valid, a.test) == (b.train, b.valid, b.test)
    assert (len(a.train), len(a.valid), len(a.test)) == (90, 5, 5)
    assert sorted(a.train + a.valid + a.test) == sorted(read_pairs(tmp_path / "all.tsv"))
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.tsv").write_text("\n".join(lines[:50]))
    (folder / "valid.jsonl").write_text('{"source": "v", "target": "w"}\n')
    data = load_parallel(str(folder))
    assert data.valid == [("v", "w")] and len(data.test) == 2 and len(data.train) == 48
    (folder / "test.tsv").write_text("p\tq\n")
    assert load_parallel(str(folder)).test == [("p", "q")]
    assert load_parallel(str(folder)).split("val") == [("v", "w")]
    with pytest.raises(AttnkitError, match="too few"):
        split_pairs([("a", "b")], 0.1)
    with pytest.raises(AttnkitError, match="has no train.tsv"):
        load_parallel(str(tmp_path / "corpus" / ".."))
    with pytest.raises(AttnkitError, match="parallel data not found"):
        load_parallel(str(tmp_path / "nope.tsv"))
    with pytest.raises(AttnkitError, match="unknown synthetic task 'reverze'"):
        load_parallel("synthetic:reverze")


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_tasks_are_deterministic_correct_and_disjoint(name):
    sizes = (3000, 100, 200)
    train, valid, test = synthetic_splits(name, sizes=sizes)
    assert (train, valid, test) == synthetic_splits(name, sizes=sizes)
    assert synthetic_splits(name, seed=1, sizes=sizes)[2] != test
    assert (len(train), len(valid), len(test)) == sizes
    held_out = [s for s, _ in valid + test]
    assert len(set(held_out)) == len(held_out)  # distinct, and never seen in training
    assert not set(held_out) & {s for s, _ in train}
    # The test split does not depend on the training-set size.
    assert synthetic_splits(name, sizes=(10, 100, 200))[2] == test
    check = {"reverse": lambda s: s[::-1], "sort": lambda s: "".join(sorted(s)),
             "add": lambda s: str(sum(int(x) for x in s.split("+")))}[name]
    assert all(check(s) == t for s, t in train[:500] + test)


# --- the task, the trainer and the commands -----------------------------------------------------

TINY = ["--model.family=seq2seq", "--data.task=seq2seq", "--model.d_model=32",
        "--model.n_heads=2", "--model.n_encoder_layers=1", "--model.n_decoder_layers=1",
        "--model.context_length=16", "--train.batch_size=8", "--train.eval_batches=2",
        "--train.device=cpu", "--train.warmup_steps=2"]


def test_cli_train_translate_eval_round_trip(env, capsys):
    rc, out, err = cli(capsys, "train", *TINY, "--data.path=synthetic:reverse", "--train.steps=6",
                       "--train.eval_every=3", "--out", "runs/r", "--train.samples=2")
    assert rc == 0, err
    assert "exact match" in err and " -> " in out  # progress and evaluations go to stderr
    assert "synthetic:reverse | char tokenizer" in out
    run = env / "runs" / "r"
    tok = load_tokenizer(run / "tokenizer.json")
    assert set(tok.special_tokens) == {"pad", "bos", "eos"}
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    assert [e["step"] for e in evals] == [3, 6] and all("exact_match" in e for e in evals)

    model = attnkit.load(run).model
    assert isinstance(model, Seq2Seq) and not model.training
    rc, out, err = cli(capsys, "translate", run, "--text", "abc", "--text", "hello",
                       "--max-new-tokens", "5")
    assert rc == 0, err
    assert len(out.splitlines()) == 2 and all(len(line) <= 5 for line in out.splitlines())
    (env / "src.txt").write_text("abc\nxyz\n")
    rc, beam_out, err = cli(capsys, "translate", run, "--input", env / "src.txt", "--beam", "3")
    assert rc == 0, err and len(beam_out.splitlines()) == 2

    rc, out, err = cli(capsys, "eval", run, "--limit", "20", "--json")
    assert rc == 0, err
    scores = json.loads(out)
    assert scores["pairs"] == 20 and scores["split"] == "test" and scores["bleu_tokenize"] == "char"
    assert 0 <= scores["exact_match"] <= 1 and 0 <= scores["chrf"] <= 100
    rc, out, err = cli(capsys, "eval", run, "--split", "val", "--limit", "8", "--beam", "2")
    assert rc == 0, err
    assert "valid split, 8 pairs" in out and "beam 2, length penalty 0.6" in out
    assert "exact match" in out and "BLEU" in out and "chrF" in out


def test_seq2seq_resume_is_exact(env, capsys):
    # A constant schedule, so that 4 steps then 4 more follow the same learning rates as 8;
    # dropout (0.1 by default) checks that the random state is restored too.
    args = [*TINY, "--data.path=synthetic:sort", "--train.eval_every=4", "--train.samples=0",
            "--train.schedule=constant"]
    assert cli(capsys, "train", *args, "--train.steps=8", "--out", "full")[0] == 0
    assert cli(capsys, "train", *args, "--train.steps=4", "--train.checkpoint_every=4",
               "--out", "part")[0] == 0
    rc, _, err = cli(capsys, "train", "--resume", "part", "--train.steps=8")
    assert rc == 0, err
    a = attnkit.load(env / "full").model.state_dict()
    b = attnkit.load(env / "part").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_task_batches_are_deterministic_and_well_formed(env):
    cfg = resolve(None, {k[2:].split("=")[0]: k.split("=")[1] for k in TINY}
                  | {"data.path": "synthetic:add", "train.steps": "1"})
    trainer = Trainer(cfg, env / "run", log=lambda *a: None)
    task = trainer.task
    b1 = task.batch("train", 5, 0, 8, torch.device("cpu"))
    b2 = task.batch("train", 5, 0, 8, torch.device("cpu"))
    assert all(torch.equal(b1[k], b2[k]) for k in b1)
    assert not torch.equal(b1["src_ids"], task.batch("train", 6, 0, 8, torch.device("cpu"))["src_ids"])
    # Targets are the decoder inputs shifted by one, ending in EOS; padding is -100.
    inp, tgt = b1["input_ids"], b1["targets"]
    assert (inp[:, 0] == task.bos_id).all()
    real = tgt != -100
    shifted = (real & (tgt != task.eos_id))[:, :-1]  # target tokens that are also inputs
    assert torch.equal(inp[:, 1:][shifted], tgt[:, :-1][shifted])
    lengths = real.sum(1)
    assert (tgt[torch.arange(8), lengths - 1] == task.eos_id).all()
    assert torch.equal(b1["src_mask"].sum(1), (b1["src_ids"] != task.pad_id).sum(1))
    assert task.tokens_in(b1) == int(b1["src_mask"].sum() + real.sum())


def test_bad_inputs_are_one_line(env, capsys, tmp_path):
    rc, _, err = cli(capsys, "train", *TINY, "--data.path=synthetic:nope", "--out", "x")
    assert rc == 2 and "unknown synthetic task 'nope'" in err
    rc, _, err = cli(capsys, "train", *TINY, "--data.path=synthetic:reverse",
                     "--model.context_length=8", "--out", "x")
    assert rc == 2 and "raise --model.context_length to at least 13" in err
    rc, _, err = cli(capsys, "train", "--data.task=seq2seq", "--data.path=synthetic:add",
                     "--out", "x")
    assert rc == 2 and "does not fit model.family=decoder" in err
    # A decoder-only run cannot translate.
    (tmp_path / "c.txt").write_text("hello world, the quick brown fox. " * 40)
    assert cli(capsys, "train", "--model.n_layers=1", "--model.d_model=16", "--model.n_heads=2",
               "--model.context_length=16", "--train.steps=1", "--train.batch_size=2",
               "--train.samples=0", f"--data.path={tmp_path / 'c.txt'}", "--out", "dec")[0] == 0
    rc, _, err = cli(capsys, "translate", "dec", "--text", "hi")
    assert rc == 2 and err.strip() == ("error: dec is a decoder model; use attnkit sample "
                                       "(attnkit translate needs a seq2seq run)")
    rc, _, err = cli(capsys, "eval", "nowhere")
    assert rc == 2 and "run directory not found: nowhere" in err
    rc, _, err = cli(capsys, "translate", "dec")
    assert rc == 2 and "nothing to translate" in err
    rc, _, err = cli(capsys, "translate", "dec", "--text", "a", "--beam", "0")
    assert rc == 2 and "--beam must be at least 1" in err


def test_eval_without_sacrebleu_names_the_install(env, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu -> ImportError
    rc, _, err = cli(capsys, "eval", "anywhere")
    assert rc == 2 and "pip install sacrebleu" in err and len(err.strip().splitlines()) == 1


def test_label_smoothing_default_is_the_papers():
    assert Seq2SeqConfig().label_smoothing == 0.1
    assert math.isclose(Seq2SeqConfig().dropout, 0.1)


@pytest.mark.slow
def test_reverse_recipe_reaches_99_percent_on_test(env, capsys):
    """The recipe of docs/seq2seq.md, as shipped (minutes on 2 CPU cores)."""
    rc, _, err = cli(capsys, "train", "seq2seq-reverse", "--out", "rev", "--no-samples")
    assert rc == 0, err
    rc, out, err = cli(capsys, "eval", "rev", "--json")
    assert rc == 0, err
    assert json.loads(out)["exact_match"] >= 0.99


def test_seq2seq_on_the_shared_block_matches_the_outputs_recorded_before_it():
    """tests/data/seq2seq_reference.safetensors holds, for three knob settings, the weights,
    logits, loss and attention maps of the encoder-decoder as it was built before its layers
    became the shared Block (own EncoderLayer / DecoderLayer): the same state-dict keys load
    and give the same numbers."""
    import json

    from safetensors import safe_open

    with safe_open(str(Path(__file__).parent / "data" / "seq2seq_reference.safetensors"),
                   "pt") as f:
        meta = f.metadata()
        ref = {k: f.get_tensor(k) for k in f.keys()}
    configs = json.loads(meta["configs"])
    base = configs.pop("base")
    for name, knobs in configs.items():
        model = Seq2Seq(Seq2SeqConfig(**base, **knobs)).eval()
        state = {k.split("/", 2)[2]: v for k, v in ref.items() if k.startswith(f"{name}/state/")}
        assert set(model.state_dict()) == set(json.loads(meta[f"{name}/keys"])), name
        model.load_state_dict(state)
        logits, loss = model(ref["input_ids"], ref["targets"], src_ids=ref["src_ids"],
                             src_mask=ref["src_mask"])
        torch.testing.assert_close(logits, ref[f"{name}/logits"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(loss, ref[f"{name}/loss"], atol=1e-6, rtol=1e-6)
        maps = model.attention_maps(ref["src_ids"], ref["input_ids"], ref["src_mask"])
        for part, layers in maps.items():
            for i, w in enumerate(layers):
                torch.testing.assert_close(w, ref[f"{name}/maps/{part}/{i}"], atol=1e-6, rtol=1e-6)
