"""ViT interop, proven against Hugging Face: tiny random ``ViTForImageClassification`` models
with odd sizes, built from a config offline and converted with the production converter, both
ways and through ``attnkit convert``."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from test_interop_bert import perturbed  # noqa: E402

import attnkit  # noqa: E402
from attnkit.cli import main  # noqa: E402
from attnkit.config import VisionConfig  # noqa: E402
from attnkit.errors import AttnkitError  # noqa: E402
from attnkit.interop import from_hf, to_hf  # noqa: E402
from attnkit.interop.decoder import ConfigReader  # noqa: E402
from attnkit.interop.vit import VIT, from_hf_vit, to_hf_vit, vision_config_in  # noqa: E402
from attnkit.models import ViT  # noqa: E402
from attnkit.weights import model_state  # noqa: E402

TOL = dict(atol=1e-4, rtol=0)  # fp32
# not in sorted order, so a mapping that sorted names instead of ids would show
NAMES = {0: "zebra", 1: "cat", 2: "owl", 3: "ant", 4: "bee"}


def hf_config(**kw) -> transformers.ViTConfig:
    base = dict(image_size=12, patch_size=3, num_channels=3, hidden_size=24, num_hidden_layers=2,
                num_attention_heads=3, intermediate_size=37, layer_norm_eps=1e-12,
                id2label=NAMES, label2id={v: k for k, v in NAMES.items()})
    return transformers.ViTConfig(**{**base, **kw})


def pixels(channels: int = 3, size: int = 12) -> torch.Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))


def hf_vit(path, **kw) -> transformers.ViTForImageClassification:
    """A scrambled tiny HF ViT, saved to ``path`` as safetensors."""
    torch.manual_seed(0)
    hf = perturbed(transformers.ViTForImageClassification(hf_config(**kw)))
    hf.save_pretrained(path, safe_serialization=True)
    return hf


def vit_like(**kw) -> ViT:
    base = dict(image_size=12, patch_size=3, channels=3, d_model=24, n_heads=3, n_layers=2,
                ffn_hidden=37, n_labels=5)
    torch.manual_seed(0)
    return perturbed(ViT(VisionConfig(**{**base, **kw})))


def hf_logits(folder, x: torch.Tensor) -> torch.Tensor:
    hf = transformers.ViTForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(pixel_values=x).logits


# ----------------------------------------------------------------------- Hugging Face -> attnkit


@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh"])
def test_import_logits_match(tmp_path, act):
    hf = hf_vit(tmp_path, hidden_act=act)
    run = from_hf_vit(tmp_path)
    x = pixels()
    with torch.no_grad():
        got, _ = run.model(x)
        expected = hf(pixel_values=x).logits
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, expected, **TOL)
    cfg = run.model.cfg
    assert cfg.norm_eps == 1e-12 and cfg.ffn == {"gelu": "gelu"}.get(act, "gelu_tanh")
    assert (cfg.pool, cfg.pos, cfg.norm_position, cfg.context_length) == ("cls", "learned", "pre", 17)
    assert run.labels == ["zebra", "cat", "owl", "ant", "bee"]  # id order
    assert run.tokenizer is None and run.config.data.task == "image" and run.source == tmp_path


def test_import_export_is_bit_identical(tmp_path):
    from safetensors.torch import load_file

    hf_vit(tmp_path / "hf")
    to_hf_vit(from_hf_vit(tmp_path / "hf"), tmp_path / "back")
    original = load_file(str(tmp_path / "hf" / "model.safetensors"))
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(back) == set(original)
    for k, t in original.items():
        assert torch.equal(back[k], t), k
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["layer_norm_eps"] == 1e-12 and config["id2label"]["0"] == "zebra"


def test_key_map_covers_every_tensor_once():
    model = vit_like(n_layers=3)
    ours = [o for row in VIT.rows(3) for o in row.ours]
    assert sorted(ours) == sorted(model_state(model))


# ----------------------------------------------------------------------- attnkit -> Hugging Face


@pytest.mark.parametrize("ffn", ["gelu", "gelu_tanh", "relu"])
def test_export_loads_with_stock_transformers(tmp_path, ffn):
    ours = vit_like(ffn=ffn)  # norm_eps: VisionConfig's own 1e-6
    assert to_hf_vit(ours, tmp_path, labels=list("abcde")) == "ViTForImageClassification"
    x = pixels()
    with torch.no_grad():
        expected, _ = ours(x)
    torch.testing.assert_close(hf_logits(tmp_path, x), expected, **TOL)
    config = transformers.ViTConfig.from_pretrained(tmp_path)
    assert config.layer_norm_eps == 1e-6 and config.id2label == dict(enumerate("abcde"))


def test_grey_model_exports_through_to_hf(tmp_path):
    ours = vit_like(channels=1, image_size=8, patch_size=4, d_model=16, n_heads=2, ffn_hidden=None)
    to_hf(ours, tmp_path)  # dispatched by family
    x = pixels(channels=1, size=8)
    with torch.no_grad():
        expected, _ = ours(x)
    torch.testing.assert_close(hf_logits(tmp_path, x), expected, **TOL)
    assert json.loads((tmp_path / "config.json").read_text())["id2label"]["4"] == "LABEL_4"


@pytest.mark.parametrize("knob,message", [
    (dict(pool="mean"), r"cannot export model\.pool=mean as Hugging Face ViT: .*class token "
                        r"\(train with --model\.pool=cls\)"),
    (dict(pos="sinusoidal"), r"cannot export model\.pos=sinusoidal as Hugging Face ViT: .* "
                             r"\(train with --model\.pos=learned\)"),
    (dict(pos="none"), r"model\.pos=none .*--model\.pos=learned"),
    (dict(norm_position="post"), r"model\.norm_position=post .*--model\.norm_position=pre"),
    (dict(norm="rmsnorm"), r"model\.norm=rmsnorm .*--model\.norm=layernorm"),
    (dict(ffn="swiglu"), r"model\.ffn=swiglu .*not gated"),
])
def test_export_refuses_what_hf_vit_cannot_express(tmp_path, knob, message):
    with pytest.raises(AttnkitError, match=message) as e:
        to_hf_vit(vit_like(**knob), tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------- the command, both ways


def test_convert_cli_round_trip(tmp_path, capsys):
    hf_vit(tmp_path / "hf")
    x = pixels()
    reference = hf_logits(tmp_path / "hf", x)
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run")]) == 0
    assert "vit" in capsys.readouterr().out
    for path in (tmp_path / "run", tmp_path / "hf"):  # the run, and the folder read directly
        run = attnkit.load(path, device="cpu")
        assert run.tokenizer is None and run.labels == ["zebra", "cat", "owl", "ant", "bee"]
        with torch.no_grad():
            torch.testing.assert_close(run.model(x)[0], reference, **TOL)

    assert main(["convert", str(tmp_path / "run"), "--to-hf", str(tmp_path / "back")]) == 0
    assert {p.name for p in (tmp_path / "back").iterdir()} == {"config.json", "model.safetensors"}
    torch.testing.assert_close(hf_logits(tmp_path / "back", x), reference, **TOL)
    config = transformers.ViTConfig.from_pretrained(tmp_path / "back")
    assert config.id2label == NAMES and config.layer_norm_eps == 1e-12
    assert isinstance(from_hf(tmp_path / "back").model, ViT)


def test_trained_run_exports_with_its_labels(env, capsys):
    """A run `attnkit train` wrote (no tokenizer.json, labels.json) exports through the CLI."""
    pytest.importorskip("sklearn")  # the built-in digits
    assert main(["train", "--model.family=vit", "--model.d_model=16", "--model.n_heads=2",
                 "--model.n_layers=1", "--train.steps=1", "--train.batch_size=8",
                 "--train.samples=0", "--out", "run"]) == 0
    assert main(["convert", "run", "--to-hf", "hf"]) == 0
    run = attnkit.load("run", device="cpu")
    x = pixels(channels=1, size=8)
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(env / "hf", x), run.model(x)[0], **TOL)
    assert transformers.ViTConfig.from_pretrained(env / "hf").id2label == dict(enumerate(run.labels))


# ----------------------------------------------------------------------- import refusals


def test_import_refusals_are_one_line(tmp_path):
    cfg = hf_config().to_dict()

    def read(**changes):
        data = {k: v for k, v in {**cfg, **changes}.items() if v is not None}
        return vision_config_in(ConfigReader(data, tmp_path / "config.json"))

    assert read(image_size=[12, 12], patch_size=[3, 3]).image_size == 12
    assert read(layer_norm_eps=None).norm_eps == 1e-12  # ViTConfig's default when absent
    with pytest.raises(AttnkitError, match="hidden_act='silu' is not supported"):
        read(hidden_act="silu")
    with pytest.raises(AttnkitError, match="qkv_bias=False is not supported"):
        read(qkv_bias=False)
    with pytest.raises(AttnkitError, match="architectures 'ViTModel' is not supported"):
        read(architectures=["ViTModel"])
    with pytest.raises(AttnkitError, match="image_size=.*square"):
        read(image_size=[12, 9])
    with pytest.raises(AttnkitError, match="model.patch_size=5 does not divide"):
        read(patch_size=5)


def test_import_refuses_mismatched_weights(tmp_path):
    hf_vit(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["patch_size"] = 4  # 9 patches of 4 x 4: the saved 3 x 3 kernels no longer fit
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AttnkitError, match=r"has shape \(24, 27\) flattened from \(24, 3, 3, 3\), "
                                           r"but config.json implies \(24, 48\)"):
        from_hf_vit(tmp_path)
