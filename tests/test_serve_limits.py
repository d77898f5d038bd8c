"""The server at its trust boundary: where it binds, how much it reads, how long it may run,
which values it takes (a bad one is a 400, never a 500 or a broken stream), and that the API key
never comes back out (not in a response, not in a log line)."""

from __future__ import annotations

import inspect
import json
import logging
import threading

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
pytest.importorskip("openai")

import test_serve  # noqa: E402
from test_serve import TIMEOUT, Server  # noqa: E402

import attnkit  # noqa: E402
from attnkit.cli import build_parser, main  # noqa: E402
from attnkit.serve.app import create_app  # noqa: E402

run = test_serve.run  # the fixture: one tiny trained run, loaded

SECRET = "sk-attnkit-SECRET-4f9c2e"  # distinctive, so any echo of it is found
LIMIT = 200
BODY_LIMIT = inspect.signature(create_app).parameters["max_body_bytes"].default


class LoggedServer(Server):
    """test_serve's server, logging everything (the access log at debug level) to the root
    logger, where caplog sees it."""

    def __init__(self, app) -> None:
        super().__init__(app)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="debug", lifespan="off",
                                                    log_config=None, access_log=True))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)


@pytest.fixture(scope="module")
def logged_server(run):
    with LoggedServer(create_app(run, "tiny", api_key=SECRET, max_tokens_limit=LIMIT)) as s:
        yield s


def post(server, path: str, *, key: str | None = SECRET, headers: dict | None = None,
         **kwargs) -> httpx.Response:
    headers = dict(headers or {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=TIMEOUT, **kwargs)


def openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code
    return err


# ------------------------------------------------------------------ binding


def test_serve_binds_localhost_by_default(tmp_path, monkeypatch, capsys, run):
    assert build_parser().parse_args(["serve", "run"]).host == "127.0.0.1"
    seen = {}
    monkeypatch.setattr(attnkit, "load", lambda *a, **k: run)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    assert main(["serve", str(tmp_path), "--api-key", SECRET]) == 0
    assert seen["host"] == "127.0.0.1"
    out, err = capsys.readouterr()
    assert "http://127.0.0.1:8000" in out and SECRET not in out + err

    # another address is allowed, with a warning when nothing guards it
    assert main(["serve", str(tmp_path), "--host", "0.0.0.0"]) == 0
    assert seen["host"] == "0.0.0.0"
    assert "without --api-key" in capsys.readouterr().err


def test_serve_loads_the_weights_in_the_dtype_asked_for(tmp_path, monkeypatch, run):
    asked = []
    monkeypatch.setattr(attnkit, "load", lambda *a, **k: asked.append(k["dtype"]) or run)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert main(["serve", str(tmp_path)]) == 0
    assert main(["serve", str(tmp_path), "--dtype", "bf16"]) == 0
    assert asked == ["fp32", "bf16"]


# ------------------------------------------------------------------ size limits


def test_a_body_over_the_limit_gets_413_with_an_openai_error(logged_server):
    pad = "x" * (BODY_LIMIT - 100)
    ok = post(logged_server, "/v1/completions", json={"prompt": "a", "max_tokens": 1, "pad": pad})
    assert ok.status_code == 200, ok.text  # just under the limit: answered

    big = {"prompt": "a", "max_tokens": 1, "pad": pad + "x" * 200}
    openai_error(post(logged_server, "/v1/completions", json=big), 413, "body_too_large")
    openai_error(post(logged_server, "/v1/chat/completions", json=big), 413, "body_too_large")


def test_a_chunked_body_without_a_length_is_cut_off_at_the_limit(logged_server):
    def chunks():  # no Content-Length header: the server must count as it reads
        yield b'{"prompt": "a", "pad": "'
        for _ in range(BODY_LIMIT // 65536 + 2):
            yield b"x" * 65536
        yield b'"}'

    r = post(logged_server, "/v1/completions", content=chunks(),
             headers={"Content-Type": "application/json"})
    openai_error(r, 413, "body_too_large")


@pytest.mark.parametrize("path, body, param, code", [
    ("/v1/completions", {"prompt": "a", "max_tokens": LIMIT + 1}, "max_tokens", "invalid_value"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}],
                              "max_completion_tokens": LIMIT + 1}, "max_tokens", "invalid_value"),
    ("/v1/completions", {"prompt": "a" * 33, "max_tokens": 1}, "prompt", "context_length_exceeded"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}] * 5, "max_tokens": 1},
     "messages", "context_length_exceeded"),
    ("/v1/attnkit/next_token", {"prompt": "a" * 33}, "prompt", "context_length_exceeded"),
    ("/v1/attnkit/attention", {"prompt": "a" * 33}, "prompt", "context_length_exceeded"),
])
def test_prompt_length_and_max_tokens_are_capped(logged_server, path, body, param, code):
    err = openai_error(post(logged_server, path, json=body), 400, code)
    assert err["param"] == param


# ------------------------------------------------------------------ secrets


def test_the_api_key_never_appears_in_a_response_or_a_log_line(logged_server, caplog):
    url = logged_server.url
    responses = []
    with caplog.at_level(logging.DEBUG):
        responses += [
            httpx.get(f"{url}/health", timeout=TIMEOUT),
            httpx.get(f"{url}/", timeout=TIMEOUT),
            httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {SECRET}"},
                      timeout=TIMEOUT),
            httpx.get(f"{url}/v1/nowhere", headers={"Authorization": f"Bearer {SECRET}"},
                      timeout=TIMEOUT),
            post(logged_server, "/v1/completions", key=None, json={"prompt": "a"}),
            post(logged_server, "/v1/completions", key=SECRET[:-1], json={"prompt": "a"}),
            post(logged_server, "/v1/completions", key=SECRET + "x", json={"prompt": "a"}),
            post(logged_server, "/v1/completions", json={"prompt": "a", "max_tokens": 3}),
            post(logged_server, "/v1/completions", json={"prompt": "a", "max_tokens": 3,
                                                         "stream": True}),
            post(logged_server, "/v1/completions", content=b"{not json"),
            post(logged_server, "/v1/completions", json={"prompt": 5}),
            post(logged_server, "/v1/completions", json={"prompt": "\u4e2d"}),
            post(logged_server, "/v1/completions", json={"model": "other", "prompt": "a"}),
            post(logged_server, "/v1/embeddings", json={"input": "a"}),
            post(logged_server, "/v1/completions", content=b" " * (BODY_LIMIT + 1)),
        ]
    assert {r.status_code for r in responses} >= {200, 400, 401, 404, 413}
    assert sum(r.status_code == 401 for r in responses) == 3
    for r in responses:
        everything = r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items())
        assert SECRET not in everything and SECRET[:12] not in everything, r.request.url
    assert caplog.records, "the server logged nothing; the log check would prove nothing"
    for record in caplog.records:
        assert SECRET not in record.getMessage()


def test_a_wrong_key_is_refused_without_being_echoed(logged_server):
    guess = "sk-guess-0123456789"
    err = openai_error(post(logged_server, "/v1/completions", key=guess, json={"prompt": "a"}), 401,
                       "invalid_api_key")
    assert guess not in err["message"]


def test_the_serve_command_never_prints_the_key_on_a_bad_run(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing"), "--api-key", SECRET]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err and len(err.splitlines()) == 1


# ------------------------------------------------------------------ sampling values


def post_raw(server, path: str, body: dict | bytes) -> httpx.Response:
    """``body`` as JSON that may hold NaN and Infinity (Python's json writes and reads them;
    httpx's ``json=`` refuses to), or as the raw bytes given."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return post(server, path, content=content, headers={"Content-Type": "application/json"})


CHAT = {"messages": [{"role": "user", "content": "a"}]}


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "a"}),
    ("/v1/chat/completions", CHAT),
], ids=["completions", "chat"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_seed_beyond_64_bits_is_a_400_before_any_byte_of_a_stream(logged_server, path, body,
                                                                     stream):
    r = post_raw(logged_server, path, {**body, "max_tokens": 3, "seed": 2**70, "stream": stream})
    err = openai_error(r, 400, "invalid_value")  # the whole body is this one JSON error
    assert err["param"] == "seed" and "2**64-1" in err["message"]
    assert r.headers["content-type"] == "application/json" and "data:" not in r.text

    # the largest seed works, whole and streamed
    ok = post_raw(logged_server, path, {**body, "max_tokens": 3, "seed": 2**64 - 1,
                                        "stream": stream})
    assert ok.status_code == 200 and "error" not in ok.text, ok.text


@pytest.mark.parametrize("fields, param, words", [
    ({"temperature": float("nan")}, "temperature", "must be a finite number, got nan"),
    ({"temperature": float("inf")}, "temperature", "must be a finite number, got inf"),
    ({"temperature": -0.5}, "temperature", "must be between 0 and 2, got -0.5"),
    ({"temperature": 10**400}, "temperature", "must be between 0 and 2"),  # no float holds it
    ({"top_p": float("nan")}, "top_p", "must be a finite number"),
    ({"top_p": 0}, "top_p", "must be in (0, 1], got 0"),
    ({"top_k": 0}, "top_k", "must be at least 1, got 0"),
    ({"top_k": -3}, "top_k", "must be at least 1, got -3"),
    ({"n": 0}, "n", "must be at least 1, got 0"),
    ({"n": 2}, "n", "must be at most 1, got 2"),
    ({"seed": -1}, "seed", "must be between 0 and 2**64-1"),
    ({"stop": ["\n", ""]}, "stop", "must not be empty"),
    ({"max_tokens": -1}, "max_tokens", f"must be between 0 and {LIMIT}, got -1"),
], ids=["nan temperature", "inf temperature", "negative temperature", "huge temperature",
        "nan top_p", "zero top_p", "zero top_k", "negative top_k", "zero n", "n of 2",
        "negative seed", "empty stop", "negative max_tokens"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_sampling_value_out_of_range_is_a_400_naming_it(logged_server, fields, param, words,
                                                          stream):
    r = post_raw(logged_server, "/v1/completions", {"prompt": "a", "max_tokens": 3,
                                                    "stream": stream, **fields})
    err = openai_error(r, 400, "invalid_value")
    assert err["param"] == param and err["message"].startswith(f"'{param}' {words}"), err
    assert "data:" not in r.text


def test_the_playground_refuses_a_nan_temperature(logged_server):
    err = openai_error(post_raw(logged_server, "/v1/attnkit/next_token",
                                {"prompt": "a", "temperature": float("nan")}), 400, "invalid_value")
    assert err["param"] == "temperature" and "finite" in err["message"]


@pytest.mark.parametrize("body, words", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"prompt": "a", "pad": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"prompt": "a", "seed": 1' + b"0" * 5000 + b"}", "too many digits"),
], ids=["deep array", "deep field", "5000-digit number"])
def test_json_python_cannot_parse_is_a_400(logged_server, body, words):
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/attnkit/next_token"):
        err = openai_error(post_raw(logged_server, path, body), 400, "invalid_json")
        assert words in err["message"]
    assert post_raw(logged_server, "/v1/completions", {"prompt": "a", "max_tokens": 1}).status_code \
        == 200  # and the server goes on answering
