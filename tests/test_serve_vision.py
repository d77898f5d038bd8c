"""``attnkit serve`` for an image model: ``POST /v1/attnkit/classify`` against a real server,
its answer checked against the model's own logits, every bad input a 400 naming the problem,
and the text endpoints refused by ability, both ways."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
Image = pytest.importorskip("PIL.Image")

from test_serve import TIMEOUT, Server  # noqa: E402

import attnkit  # noqa: E402
from attnkit.cli import main  # noqa: E402
from attnkit.config import DecoderConfig, RunConfig, VisionConfig  # noqa: E402
from attnkit.data.images import image_to_tensor  # noqa: E402
from attnkit.models import build_model  # noqa: E402
from attnkit.serve.app import MAX_IMAGE_PIXELS, create_app  # noqa: E402
from attnkit.tokenizers import CharTokenizer  # noqa: E402

LABELS = ["a", "b", "c"]
CLASSIFY = "/v1/attnkit/classify"


@pytest.fixture(scope="module")
def vision():
    torch.manual_seed(0)
    cfg = VisionConfig(image_size=8, patch_size=4, channels=1, n_labels=3, d_model=16, n_heads=2,
                       n_layers=1)
    return attnkit.Loaded(build_model(cfg).eval(), None, RunConfig(), labels=LABELS)


@pytest.fixture(scope="module")
def server(vision):
    with Server(create_app(vision, "vit")) as s:
        yield s


def picture(mode: str, size: tuple[int, int] = (8, 8), seed: int = 0):
    """A random Pillow image of ``mode`` (L, RGB, RGBA)."""
    g = torch.Generator().manual_seed(seed)
    bands = len(mode)
    pixels = torch.randint(0, 256, (size[1], size[0], bands), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.squeeze(-1).numpy() if bands == 1 else pixels.numpy(), mode)


def encoded(image, fmt: str = "PNG") -> tuple[bytes, str]:
    """The file bytes of ``image`` saved as ``fmt``, and their base64."""
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue(), base64.b64encode(buf.getvalue()).decode()


def expected_probs(run, image) -> torch.Tensor:
    """Softmax of the model's own logits on the image as training prepares it."""
    cfg = run.model.cfg
    with torch.no_grad():
        logits = run.model(image_to_tensor(image, cfg.image_size, cfg.channels)[None])[0][0]
    return torch.softmax(logits.double(), dim=-1)


def classify(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{CLASSIFY}", json=body, timeout=TIMEOUT)


def bad_request(r: httpx.Response, code: str) -> dict:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    return err


@pytest.mark.parametrize("mode, size, fmt, data_url", [
    ("L", (8, 8), "PNG", False),
    ("RGB", (8, 8), "PNG", False),  # converted to the model's one channel
    ("RGB", (13, 10), "JPEG", True),  # resized, and sent as a data URL
    ("RGBA", (8, 8), "PNG", True),
], ids=["grey png", "rgb png", "rgb jpeg data url", "rgba png"])
def test_classify_answers_the_softmax_of_the_models_own_logits(server, vision, mode, size, fmt,
                                                               data_url):
    image = picture(mode, size)
    raw, b64 = encoded(image, fmt)
    if data_url:
        b64 = f"data:image/{fmt.lower()};base64,{b64}"
    r = classify(server, {"image": b64})
    assert r.status_code == 200, r.text
    answer = r.json()
    # what the server decoded: the same file read back (a JPEG is lossy)
    want = expected_probs(vision, Image.open(io.BytesIO(raw)))
    probs = answer["probs"]
    assert answer["model"] == "vit" and len(probs) == 3
    assert [p["prob"] for p in probs] == sorted((p["prob"] for p in probs), reverse=True)
    assert sum(p["prob"] for p in probs) == pytest.approx(1, abs=1e-5)
    for p in probs:
        assert p["label"] == LABELS[p["id"]]
        assert p["prob"] == pytest.approx(float(want[p["id"]]), abs=1e-5)
    assert answer["label"] == LABELS[int(want.argmax())] == probs[0]["label"]


def test_top_k_keeps_the_most_likely_classes(server):
    _, b64 = encoded(picture("L", seed=1))
    every = classify(server, {"image": b64}).json()["probs"]
    assert classify(server, {"image": b64, "top_k": 2}).json()["probs"] == every[:2]
    assert classify(server, {"image": b64, "top_k": 10}).json()["probs"] == every  # at most all
    wrapped = "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76))  # as `base64` writes it
    assert classify(server, {"image": wrapped}).json()["probs"] == every


def png_of(width: int, height: int) -> str:
    """The base64 of a blank grey PNG."""
    return encoded(Image.new("L", (width, height)))[1]


def declared_png(width: int, height: int) -> str:
    """The base64 of a PNG whose header declares ``width`` x ``height`` grey pixels, with a few
    bytes of pixel data: what a decompression bomb looks like until it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


TYPE, VALUE = "invalid_type", "invalid_value"


@pytest.mark.parametrize("body, param, code, words", [
    ({}, "image", TYPE, "'image' must be a string"),
    ({"image": 5}, "image", TYPE, "'image' must be a string"),
    ({"image": ["abc"]}, "image", TYPE, "'image' must be a string"),
    ({"image": "not base64!"}, "image", VALUE, "not valid base64"),
    ({"image": "abc"}, "image", VALUE, "not valid base64"),  # wrong padding
    ({"image": "d\u00e9j\u00e0"}, "image", VALUE, "not valid base64"),
    ({"image": ""}, "image", VALUE, "'image' is empty"),
    ({"image": base64.b64encode(b"hello, not an image").decode()}, "image", VALUE,
     "not an image Pillow reads"),
    ({"image": "data:image/png,abc"}, "image", VALUE, "data URL that is not base64"),
    ({"image": "TRUNCATED"}, "image", VALUE, "damaged image file"),
    ({"image": declared_png(4097, 4096)}, "image", VALUE,
     f"is 4097x4096 pixels, over the limit of {MAX_IMAGE_PIXELS} pixels"),
    ({"image": declared_png(20_000, 20_000)}, "image", VALUE,  # over Pillow's own limit too
     f"over the limit of {MAX_IMAGE_PIXELS} pixels"),
    ({"top_k": 0}, "top_k", VALUE, "'top_k' must be at least 1, got 0"),
    ({"top_k": -2}, "top_k", VALUE, "'top_k' must be at least 1, got -2"),
    ({"top_k": "2"}, "top_k", TYPE, "'top_k' must be an integer, got str"),
    ({"top_k": 1.5}, "top_k", TYPE, "'top_k' must be an integer, got float"),
    ({"top_k": True}, "top_k", TYPE, "'top_k' must be an integer, got a boolean"),
], ids=["missing", "number", "list", "bad characters", "bad padding", "not ascii", "empty",
        "not an image", "data url without base64", "truncated png", "too many pixels", "a bomb",
        "top_k 0", "negative top_k", "string top_k", "float top_k", "boolean top_k"])
def test_a_bad_input_is_a_400_naming_the_problem(server, body, param, code, words):
    good = png_of(8, 8)
    if body.get("image") == "TRUNCATED":
        raw, _ = encoded(picture("L", (64, 64)))
        body = {"image": base64.b64encode(raw[:len(raw) // 2]).decode()}
    elif param == "top_k":
        body = {"image": good, **body}
    err = bad_request(classify(server, body), code)
    assert err["param"] == param and words in err["message"], err
    assert classify(server, {"image": good}).status_code == 200  # and the server goes on


def test_a_body_over_the_limit_is_a_413(server):
    r = classify(server, {"image": "A" * 1_100_000})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "a"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}]}),
    ("/v1/embeddings", {"input": "a"}),
    ("/v1/attnkit/next_token", {"prompt": "a"}),
    ("/v1/attnkit/attention", {"prompt": "a"}),
])
def test_a_text_endpoint_refuses_an_image_model(server, path, body):
    r = httpx.post(f"{server.url}{path}", json=body, timeout=TIMEOUT)
    err = bad_request(r, "unsupported_model")
    assert "reads images, not text" in err["message"] and "vit" in err["message"]


def test_classify_refuses_a_text_model():
    tok = CharTokenizer(list("abc"), specials=["pad", "bos", "eos"])
    cfg = DecoderConfig(vocab_size=tok.vocab_size, context_length=8, d_model=16, n_heads=2,
                        n_layers=1)
    text = attnkit.Loaded(build_model(cfg).eval(), tok, RunConfig())
    with Server(create_app(text, "gpt")) as s:
        err = bad_request(classify(s, {"image": png_of(8, 8)}), "unsupported_model")
        assert "does not read images" in err["message"]
        assert httpx.get(f"{s.url}/health", timeout=TIMEOUT).json()["status"] == "ok"


def test_labels_that_do_not_match_the_classes_are_refused(vision):
    with pytest.raises(attnkit.AttnkitError, match="2 labels for a model of 3 classes"):
        create_app(attnkit.Loaded(vision.model, None, RunConfig(), labels=["a", "b"]), "vit")


def test_attnkit_serve_serves_a_trained_vision_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--model.family=vit", "--data.path=digits", "--train.steps=2",
                 "--train.batch_size=8", "--model.d_model=16", "--model.n_heads=2",
                 "--model.n_layers=1", "--no-samples", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    assert main(["serve", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "as 'run' at http://127.0.0.1:8000" in out and "/v1/attnkit/classify" in out
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000

    # the app the command built (the served back-end applied) answers as the plain model does
    plain = attnkit.load(tmp_path / "run", device="cpu")
    image = picture("L")
    with Server(seen["app"]) as s:
        r = classify(s, {"image": encoded(image)[1]})
    assert r.status_code == 200, r.text
    want = expected_probs(plain, image)
    assert {p["label"] for p in r.json()["probs"]} == {str(d) for d in range(10)}
    for p in r.json()["probs"]:
        assert p["label"] == str(p["id"]) and p["prob"] == pytest.approx(float(want[p["id"]]), abs=1e-5)
