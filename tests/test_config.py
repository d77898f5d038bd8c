"""Configuration: defaults, recipes, overrides, strict typing, presets and the lr schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from attnkit.config import (
    SIZES,
    STYLES,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    list_recipes,
    load_recipe,
    parse_overrides,
    resolve,
)
from attnkit.errors import AttnkitError
from attnkit.train.optim import lr_at

REPO_RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def model_cfg(**model) -> ModelConfig:
    return config_from_dict({"model": model}).model


# ------------------------------------------------------------------ defaults and recipes


def test_defaults_build_and_round_trip_through_a_dict():
    cfg = RunConfig()
    assert isinstance(cfg.model, ModelConfig)
    assert isinstance(cfg.train, TrainConfig)
    assert isinstance(cfg.data, DataConfig)
    assert cfg.model.n_kv_heads == cfg.model.n_heads  # None means MHA
    assert cfg.model.vocab_size == 0  # filled in from the tokenizer at train time
    assert config_from_dict({}) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg
    assert resolve() == cfg


def test_shakespeare_recipe_by_name():
    data = load_recipe("shakespeare-char")
    assert "description" not in data  # prose, not a config key
    assert set(data) <= {"model", "train", "data"}
    cfg = config_from_dict(data)
    assert cfg.model.context_length == data["model"]["context_length"]
    assert cfg.train.steps == data["train"]["steps"]
    assert cfg.data.tokenizer == "char"
    assert "shakespeare-char" in list_recipes()


@pytest.mark.parametrize("path", sorted(REPO_RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_recipe_loads_and_builds(path: Path):
    by_name = load_recipe(path.stem)
    by_path = load_recipe(str(path))
    assert by_name == by_path
    cfg = config_from_dict(by_name)
    assert isinstance(cfg, RunConfig)
    assert path.stem in list_recipes()


def test_recipe_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("description: a test\nmodel:\n  d_model: 48\n  n_heads: 3\n"
                    "train:\n  lr: 1e-3\n  steps: 7\n")
    data = load_recipe(str(path))
    assert data == {"model": {"d_model": 48, "n_heads": 3}, "train": {"lr": "1e-3", "steps": 7}}
    cfg = config_from_dict(data)
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.train.steps) == (48, 3, 7)
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as a string; still a number


def test_recipe_yml_suffix_and_empty_file(tmp_path):
    path = tmp_path / "empty.yml"
    path.write_text("")
    assert load_recipe(str(path)) == {}
    assert config_from_dict(load_recipe(str(path))) == RunConfig()


def test_missing_recipe_file(tmp_path):
    with pytest.raises(AttnkitError, match="recipe file not found"):
        load_recipe(str(tmp_path / "nope.yaml"))


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_model: 32\n  n_heads: [1, 2\n")
    with pytest.raises(AttnkitError, match="not valid YAML") as exc:
        load_recipe(str(path))
    assert str(path) in str(exc.value)
    assert "line" in str(exc.value)


def test_recipe_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(AttnkitError, match="mapping"):
        load_recipe(str(path))


def test_unknown_recipe_lists_available_ones():
    with pytest.raises(AttnkitError) as exc:
        load_recipe("no-such-recipe")
    msg = str(exc.value)
    assert "unknown recipe 'no-such-recipe'" in msg
    for name in list_recipes():
        assert name in msg


def test_unknown_recipe_suggests_closest():
    with pytest.raises(AttnkitError, match="did you mean 'shakespeare-char'"):
        load_recipe("shakespear-char")


def test_unknown_section_in_a_recipe():
    with pytest.raises(AttnkitError, match="unknown config key 'modle'.*did you mean 'model'"):
        config_from_dict({"modle": {"d_model": 32}})


@pytest.mark.parametrize("section", [{"model": "gpt2"}, {"train": [1, 2]}])
def test_non_mapping_section_is_a_user_error(section):
    with pytest.raises(AttnkitError, match="mapping"):
        config_from_dict(apply_overrides(section, {}))


# ------------------------------------------------------------------ parse_overrides


def test_parse_overrides_forms():
    args = ["--train.steps=10", "--model.pos", "rope", "--data.path=a=b.txt", "--train.lr", "-1"]
    assert parse_overrides(args) == {"train.steps": "10", "model.pos": "rope",
                                     "data.path": "a=b.txt", "train.lr": "-1"}
    assert parse_overrides([]) == {}
    assert parse_overrides(["--train.steps=1", "--train.steps=2"]) == {"train.steps": "2"}
    assert parse_overrides(["--data.path="]) == {"data.path": ""}


@pytest.mark.parametrize("args", [["--train.steps"], ["--train.steps", "--model.pos=rope"]])
def test_parse_overrides_missing_value(args):
    with pytest.raises(AttnkitError, match="has no value.*--train.steps=VALUE"):
        parse_overrides(args)


@pytest.mark.parametrize("arg", ["train.steps=3", "-train.steps=3", "--steps=3", "steps"])
def test_parse_overrides_malformed(arg):
    with pytest.raises(AttnkitError, match="cannot parse argument") as exc:
        parse_overrides([arg])
    assert "--section.key=value" in str(exc.value)


def test_parse_overrides_too_many_dots():
    with pytest.raises(AttnkitError, match="unknown config key 'train.lr.peak'.*'train.lr'"):
        parse_overrides(["--train.lr.peak=1"])


# ------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize("key, suggestion", [
    ("train.stpes", "train.steps"),
    ("train.context_length", "model.context_length"),  # right leaf, wrong section
    ("model.nheads", "model.n_heads"),
    ("modle.d_model", "model.d_model"),  # misspelt section
    ("data.tokeniser", "data.tokenizer"),
])
def test_unknown_key_suggests_closest(key, suggestion):
    with pytest.raises(AttnkitError) as exc:
        resolve(overrides={key: "1"})
    assert f"unknown config key '{key}'" in str(exc.value)
    assert f"did you mean '{suggestion}'" in str(exc.value)


def test_unknown_key_without_a_close_match_points_at_help():
    with pytest.raises(AttnkitError, match="unknown config key 'zzz.qqq'.*--help"):
        resolve(overrides={"zzz.qqq": "1"})


def test_unknown_key_inside_a_recipe_section():
    with pytest.raises(AttnkitError, match="unknown config key 'train.stpes'.*'train.steps'"):
        config_from_dict({"train": {"stpes": 3}})


# ------------------------------------------------------------------ types


@pytest.mark.parametrize("key, value, expected", [
    ("train.steps", "12", 12),
    ("train.steps", "1_000", 1000),
    ("train.steps", "1e3", 1000),
    ("train.steps", "20.0", 20),
    ("train.lr", "3e-4", 3e-4),
    ("train.lr", "1", 1.0),
    ("model.bias", "false", False),
    ("model.bias", "yes", True),
    ("model.bias", "0", False),
    ("model.tie_embeddings", "True", True),
    ("model.pos", "rope", "rope"),
    ("data.path", "some/file.txt", "some/file.txt"),
    ("model.n_kv_heads", "none", None),
    ("train.min_lr", "null", None),
    ("train.min_lr", "1e-5", 1e-5),
    ("data.cache_dir", "None", None),
])
def test_override_values_are_coerced(key, value, expected):
    cfg = resolve(overrides={key: value})
    section, leaf = key.split(".")
    got = getattr(getattr(cfg, section), leaf)
    if key == "model.n_kv_heads":  # None becomes n_heads after validation
        assert got == cfg.model.n_heads
    else:
        assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("key, value, match", [
    ("train.steps", "abc", "train.steps must be an integer, got 'abc'"),
    ("train.steps", "2.5", "train.steps must be an integer"),
    ("train.steps", "none", "train.steps must be an integer"),  # not optional
    ("train.lr", "fast", "train.lr must be a number, got 'fast'"),
    ("model.bias", "maybe", "model.bias must be true or false, got 'maybe'"),
    ("model.pos", "ropee", "model.pos must be one of .*rope.*did you mean 'rope'"),
    ("model.norm", "rmsnrom", "did you mean 'rmsnorm'"),
    ("data.tokenizer", "words", "data.tokenizer must be one of char, byte, bpe"),
    ("model.n_kv_heads", "two", "model.n_kv_heads must be an integer"),
])
def test_wrong_types_are_user_errors(key, value, match):
    with pytest.raises(AttnkitError, match=match):
        resolve(overrides={key: value})


@pytest.mark.parametrize("section, value, match", [
    ("train", {"steps": True}, "train.steps must be an integer"),  # a bool is not an int
    ("train", {"lr": False}, "train.lr must be a number"),
    ("model", {"bias": 1.5}, "model.bias must be true or false"),
    ("data", {"path": None}, "data.path must be a string"),
    ("train", {"steps": None}, "train.steps must be an integer"),
])
def test_wrong_types_from_a_recipe(section, value, match):
    with pytest.raises(AttnkitError, match=match):
        config_from_dict({section: value})


@pytest.mark.parametrize("overrides, match", [
    ({"train.steps": "0"}, "train.steps must be at least 1"),
    ({"train.batch_size": "10", "train.grad_accum": "3"}, "not divisible by train.grad_accum"),
    ({"train.lr": "0"}, "train.lr must be positive"),
    ({"model.dropout": "1.0"}, r"model.dropout must be in \[0, 1\)"),
    ({"data.val_fraction": "0"}, r"data.val_fraction must be in \(0, 1\)"),
])
def test_out_of_range_values(overrides, match):
    with pytest.raises(AttnkitError, match=match):
        resolve(overrides=overrides)


# ------------------------------------------------------------------ incompatible knobs


def test_d_model_must_divide_by_n_heads():
    with pytest.raises(AttnkitError, match="d_model=30 is not divisible by model.n_heads=4"):
        model_cfg(d_model=30, n_heads=4)


def test_n_heads_must_divide_by_n_kv_heads():
    with pytest.raises(AttnkitError, match="n_heads=4 is not divisible by model.n_kv_heads=3"):
        model_cfg(d_model=32, n_heads=4, n_kv_heads=3)


def test_rope_needs_an_even_head_size():
    with pytest.raises(AttnkitError, match="rope needs an even head size.*= 3"):
        model_cfg(pos="rope", d_model=30, n_heads=10)
    # the same shape is fine without rope, and rope is fine with an even head size
    assert model_cfg(pos="learned", d_model=30, n_heads=10).head_size == 3
    assert model_cfg(pos="rope", d_model=32, n_heads=8).head_size == 4


def test_gqa_and_mqa_are_valid():
    assert model_cfg(n_heads=4, n_kv_heads=2).n_kv_heads == 2
    assert model_cfg(n_heads=4, n_kv_heads=1).n_kv_heads == 1


# ------------------------------------------------------------------ presets


@pytest.mark.parametrize("style", sorted(STYLES))
def test_style_expands(style):
    cfg = model_cfg(style=style)
    for key, value in STYLES[style].items():
        if key != "kv_heads_ratio":
            assert getattr(cfg, key) == value, key
    assert cfg.style == style


@pytest.mark.parametrize("size", sorted(SIZES))
def test_size_expands(size):
    cfg = model_cfg(size=size)
    for key, value in SIZES[size].items():
        assert getattr(cfg, key) == value, key


def test_explicit_keys_win_over_presets():
    cfg = model_cfg(style="llama", size="tiny", d_model=32, pos="alibi", bias=True)
    assert cfg.d_model == 32 and cfg.pos == "alibi" and cfg.bias is True
    assert cfg.n_layers == SIZES["tiny"]["n_layers"]
    assert cfg.ffn == "swiglu" and cfg.norm == "rmsnorm"
    # the same from the command line (strings) on top of a recipe
    cfg = resolve(overrides={"model.style": "original", "model.norm_position": "pre"}).model
    assert cfg.norm_position == "pre" and cfg.pos == "sinusoidal"


def test_llama_gets_gqa_with_half_the_kv_heads():
    assert model_cfg(style="llama").n_kv_heads == ModelConfig.n_heads // 2
    assert model_cfg(style="llama", size="small").n_kv_heads == SIZES["small"]["n_heads"] // 2
    cfg = model_cfg(style="llama", n_heads=8, d_model=64)
    assert (cfg.n_heads, cfg.n_kv_heads) == (8, 4)
    # from the command line the head count is a string
    cfg = resolve(overrides={"model.style": "llama", "model.n_heads": "8", "model.d_model": "64"})
    assert cfg.model.n_kv_heads == 4
    # an explicit kv head count wins; an odd head count falls back to MHA
    assert model_cfg(style="llama", n_kv_heads=1).n_kv_heads == 1
    assert model_cfg(style="llama", n_heads=3, d_model=48).n_kv_heads == 3
    # other styles keep MHA
    assert model_cfg(style="gpt2", n_heads=8, d_model=64).n_kv_heads == 8


@pytest.mark.parametrize("n_heads, ok", [("8.0", True), ("abc", False)])
def test_llama_with_unusual_n_heads_string(n_heads, ok):
    overrides = {"model.style": "llama", "model.n_heads": n_heads, "model.d_model": "64"}
    if ok:
        assert resolve(overrides=overrides).model.n_kv_heads == 4
    else:
        with pytest.raises(AttnkitError, match="model.n_heads must be an integer"):
            resolve(overrides=overrides)


@pytest.mark.parametrize("kind, bad, good", [("style", "lama", "llama"), ("size", "tiyn", "tiny")])
def test_unknown_preset_suggests(kind, bad, good):
    with pytest.raises(AttnkitError) as exc:
        model_cfg(**{kind: bad})
    msg = str(exc.value)
    assert f"unknown model.{kind} '{bad}'" in msg
    assert f"did you mean '{good}'" in msg
    table = STYLES if kind == "style" else SIZES
    assert all(name in msg for name in table)


# ------------------------------------------------------------------ resolve order


def test_resolve_order_defaults_then_recipe_then_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  d_model: 64\n  n_layers: 3\ntrain:\n  steps: 50\n  lr: 0.01\n")
    cfg = resolve(str(path), {"train.steps": "9", "model.pos": "rope"})
    assert cfg.train.steps == 9  # override beats recipe
    assert cfg.train.lr == 0.01  # recipe beats default
    assert cfg.model.d_model == 64 and cfg.model.n_layers == 3
    assert cfg.model.pos == "rope"  # override of a default
    assert cfg.train.batch_size == TrainConfig().batch_size  # untouched default
    assert cfg.data == DataConfig(task="lm")  # auto resolves to the family's task


def test_resolve_recipe_by_name_with_overrides():
    base = resolve("shakespeare-char")
    cfg = resolve("shakespeare-char", {"model.n_layers": "1"})
    assert cfg.model.n_layers == 1
    assert cfg.model.d_model == base.model.d_model


def test_apply_overrides_does_not_mutate_its_input():
    data = {"train": {"steps": 5}}
    out = apply_overrides(data, {"train.steps": "6"})
    assert data == {"train": {"steps": 5}}
    assert out == {"train": {"steps": "6"}}


# ------------------------------------------------------------------ learning-rate schedule


def train_cfg(**kw) -> TrainConfig:
    base = dict(steps=100, warmup_steps=10, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_warmup_is_linear_up_to_the_peak():
    cfg = train_cfg()
    lrs = [lr_at(s, cfg) for s in range(cfg.warmup_steps)]
    assert lrs == pytest.approx([1e-3 * (s + 1) / 10 for s in range(10)])
    diffs = [b - a for a, b in zip(lrs, lrs[1:])]
    assert diffs == pytest.approx([1e-4] * 9)
    assert lr_at(cfg.warmup_steps - 1, cfg) == pytest.approx(cfg.lr)
    assert lr_at(cfg.warmup_steps, cfg) == pytest.approx(cfg.lr)  # cosine starts at the peak
    assert max(lr_at(s, cfg) for s in range(cfg.steps + 1)) == pytest.approx(cfg.lr)


def test_cosine_decays_monotonically_to_min_lr():
    cfg = train_cfg()
    last = cfg.steps - 1  # steps are numbered 0 .. steps - 1
    lrs = [lr_at(s, cfg) for s in range(cfg.warmup_steps, cfg.steps + 1)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert lr_at(last, cfg) == pytest.approx(cfg.lr / 10)  # default min_lr
    assert lr_at(cfg.steps + 50, cfg) == pytest.approx(cfg.lr / 10)  # flat afterwards
    span = last - cfg.warmup_steps
    mid = cfg.warmup_steps + span / 2
    assert lr_at(mid, cfg) == pytest.approx((cfg.lr + cfg.lr / 10) / 2)
    explicit = train_cfg(min_lr=2e-5)
    assert lr_at(explicit.steps - 1, explicit) == pytest.approx(2e-5)


def test_cosine_without_warmup():
    cfg = train_cfg(warmup_steps=0, steps=10)
    assert lr_at(0, cfg) == pytest.approx(cfg.lr)
    expected = [1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * min(s, 9) / 9)) for s in range(11)]
    assert [lr_at(s, cfg) for s in range(11)] == pytest.approx(expected)


def test_last_trained_step_uses_min_lr():
    cfg = train_cfg(warmup_steps=0, steps=10)
    assert lr_at(cfg.steps - 1, cfg) == pytest.approx(cfg.lr / 10)


def test_constant_schedule():
    cfg = train_cfg(schedule="constant")
    assert lr_at(0, cfg) == pytest.approx(cfg.lr / cfg.warmup_steps)
    assert all(lr_at(s, cfg) == cfg.lr for s in range(cfg.warmup_steps, cfg.steps + 5))


# ------------------------------------------------------------------ families and noam


def test_family_selects_the_config_dataclass():
    from attnkit.config import EncoderConfig, Seq2SeqConfig

    s2s = config_from_dict({"model": {"family": "seq2seq"}}).model
    assert isinstance(s2s, Seq2SeqConfig)
    # the 2017 paper's choices are the seq2seq defaults
    assert (s2s.norm_position, s2s.pos, s2s.ffn, s2s.share_embeddings) == (
        "post", "sinusoidal", "relu", True)
    assert isinstance(config_from_dict({"model": {"family": "encoder"}}).model, EncoderConfig)


def test_family_errors_name_the_fix():
    with pytest.raises(AttnkitError, match="did you mean 'seq2seq'"):
        config_from_dict({"model": {"family": "seq2sq"}})
    with pytest.raises(AttnkitError, match="belongs to seq2seq"):
        config_from_dict({"model": {"n_encoder_layers": 2}})


def test_noam_schedule_is_the_papers_shape():
    cfg = train_cfg(schedule="noam", warmup_steps=4, lr=1e-3)
    lrs = [lr_at(s, cfg) for s in range(16)]
    assert lrs[3] == pytest.approx(1e-3)  # peak at s = warmup
    assert lrs[0] == pytest.approx(1e-3 / 4)  # linear warmup
    assert lrs[15] == pytest.approx(1e-3 * (4 / 16) ** 0.5)  # 1/sqrt(step) decay


def test_data_task_follows_the_family_and_refuses_a_mismatch():
    assert config_from_dict({}).data.task == "lm"
    assert config_from_dict({"model": {"family": "encoder"}}).data.task == "mlm"
    assert config_from_dict({"model": {"family": "seq2seq"}}).data.task == "seq2seq"
    assert config_from_dict({"model": {"family": "lstm"}}).data.task == "lm"
    enc = {"model": {"family": "encoder", "n_labels": 2}, "data": {"task": "classify"}}
    assert config_from_dict(enc).data.task == "classify"
    with pytest.raises(AttnkitError, match="does not fit model.family=encoder"):
        config_from_dict({"model": {"family": "encoder"}, "data": {"task": "lm"}})
