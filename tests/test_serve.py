"""``attnkit serve``: the OpenAI-compatible API through the official client, errors, auth,
concurrency and disconnects, against a real server on a free local port."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

import attnkit  # noqa: E402
from attnkit.cli import main  # noqa: E402
from attnkit.serve import create_app  # noqa: E402
from attnkit.serve.app import StopFilter, chat_prompt  # noqa: E402

TINY = ["--model.n_layers=1", "--model.d_model=32", "--model.n_heads=2",
        "--model.context_length=32", "--train.batch_size=4", "--train.eval_batches=2"]
KEY = "test-key"
TIMEOUT = 60  # hang protection only


class Server:
    """uvicorn on a pre-bound free port of 127.0.0.1, in a background thread."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            threading.Event().wait(0.02)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT)
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def train(root: Path, *extra: str) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("ATTNKIT_CACHE", str(root / "cache"))
        rc = main(["train", *TINY, *extra, "--train.steps=3", "--no-samples", "--out", str(root / "run")])
    assert rc == 0
    return root / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny trained decoder run: what attnkit.load returns."""
    return attnkit.load(train(tmp_path_factory.mktemp("serve")), device="cpu")


@pytest.fixture(scope="module")
def server(run):
    with Server(create_app(run, "tiny", api_key=KEY, max_tokens_limit=200)) as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, timeout=TIMEOUT, max_retries=0)


def test_health_and_models(server, client):
    assert httpx.get(f"{server.url}/health", timeout=TIMEOUT).json()["status"] == "ok"
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_completion_matches_the_sampler(client, run):
    r = client.completions.create(model="tiny", prompt="The ", max_tokens=12, temperature=0)
    expected = run.generate("The ", 12, temperature=0)
    assert r.choices[0].text == expected
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 12
    assert r.usage.total_tokens == 16


def test_streaming_completion_equals_the_whole(client):
    whole = client.completions.create(model="tiny", prompt="def ", max_tokens=15, temperature=0.9,
                                      seed=7).choices[0].text
    chunks = list(client.completions.create(model="tiny", prompt="def ", max_tokens=15,
                                            temperature=0.9, seed=7, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole and len(chunks) > 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 15


def test_stop_string_ends_with_finish_reason_stop(client, run):
    full = run.generate("a", 30, temperature=0)
    stop = full[5:7]
    r = client.completions.create(model="tiny", prompt="a", max_tokens=30, temperature=0, stop=stop)
    assert r.choices[0].text == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_stop_filter_holds_back_a_possible_stop():
    f = StopFilter(["END"])
    assert f.feed("abcE") == "abc" and f.feed("N") == "" and f.feed("x") == "ENx"
    assert f.feed("yEND tail") == "y" and f.stopped and f.flush() == ""


def test_chat_completion_and_stream(client, run):
    messages = [{"role": "system", "content": "Be."}, {"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    prompt = chat_prompt(messages)
    assert prompt == "system: Be.\nuser: Hi\nassistant:"
    content = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert run.generate(prompt, 10, temperature=0).startswith(content)
    assert r.usage.prompt_tokens == len(prompt)
    streamed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                              temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == content


@pytest.mark.parametrize("kwargs,status,param", [
    ({"model": "gpt-4"}, 404, "model"),
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"max_tokens": 10**9}, 400, "max_tokens"),
    ({"prompt": "x" * 33}, 400, "prompt"),
    ({"temperature": "hot"}, 400, "temperature"),
    ({"prompt": 5}, 400, "prompt"),
    ({"n": 2}, 400, "n"),
])
def test_bad_requests_get_openai_errors(client, kwargs, status, param):
    args = {"model": "tiny", "prompt": "The ", "max_tokens": 5, **kwargs}
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(**args)
    assert e.value.status_code == status
    err = e.value.response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert err["message"]


def test_prompt_over_context_names_the_limit(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x" * 40, max_tokens=1)
    assert e.value.response.json()["error"]["code"] == "context_length_exceeded"


def test_raw_invalid_json_wrong_shape_and_big_body(server):
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, code in ((b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json")):
        r = httpx.post(f"{server.url}/v1/completions", content=body, headers=h, timeout=TIMEOUT)
        assert r.status_code == 400 and r.json()["error"]["code"] == code
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": "hi"}, headers=h,
                   timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(f"{server.url}/v1/completions", content=b" " * 2_000_000, headers=h,
                   timeout=TIMEOUT)
    assert r.status_code == 413
    r = httpx.get(f"{server.url}/v1/nowhere", headers=h, timeout=TIMEOUT)
    assert r.status_code == 404 and "error" in r.json()


def test_api_key_is_required(server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", timeout=TIMEOUT, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "a"}, timeout=TIMEOUT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_embeddings_refused_for_a_decoder(client):
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input="hello")


def test_sixteen_concurrent_clients_all_get_their_answer(client):
    prompts = [f"{c} " for c in "abcdefghijklmnop"]

    def ask(prompt: str, seed: int) -> str:
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=20,
                                         temperature=1.0, seed=seed).choices[0].text

    alone = [ask(p, i) for i, p in enumerate(prompts)]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, prompts, range(16)))
    assert together == alone


def test_disconnect_mid_stream_leaves_the_server_working(server, client):
    h = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "The ", "max_tokens": 200, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=h,
                      timeout=TIMEOUT) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"]
    # the connection is closed here, mid-stream; the next request is still answered
    r = client.completions.create(model="tiny", prompt="The ", max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length"


def test_playground_endpoints(server):
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{server.url}/v1/attnkit/next_token",
                   json={"prompt": "The ", "temperature": 1.0, "top": 5}, headers=h, timeout=TIMEOUT)
    probs = [t["prob"] for t in r.json()["tokens"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
    r = httpx.post(f"{server.url}/v1/attnkit/next_token",
                   json={"prompt": "The ", "temperature": 0, "top": 2}, headers=h, timeout=TIMEOUT)
    assert [t["prob"] for t in r.json()["tokens"]] == [1.0, 0.0]
    r = httpx.post(f"{server.url}/v1/attnkit/attention",
                   json={"prompt": "The ", "layer": 0, "head": 1}, headers=h, timeout=TIMEOUT).json()
    assert r["tokens"] == list("The ") and r["n_heads"] == 2
    m = r["matrix"]
    assert len(m) == 4 and all(abs(sum(row) - 1) < 1e-3 for row in m) and m[0][1] == 0
    r = httpx.post(f"{server.url}/v1/attnkit/attention", json={"prompt": "a", "layer": 5},
                   headers=h, timeout=TIMEOUT)
    assert r.status_code == 400
    page = httpx.get(f"{server.url}/", timeout=TIMEOUT).text
    assert "<canvas" in page and "/v1/completions" in page and "http" not in page.split("<script>")[0]


def test_embeddings_from_an_encoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-enc")
    enc = attnkit.load(train(root, "--model.family=encoder", "--data.task=mlm"), device="cpu")
    from attnkit.generate.embed import embed_texts

    expected = embed_texts(enc.model, ["hello", "the fox"], tokenizer=enc.tokenizer)[0]
    with Server(create_app(enc, "enc")) as s:
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
        r = c.embeddings.create(model="enc", input=["hello", "the fox"])  # base64 by default
        assert len(r.data) == 2
        for got, want in zip(r.data, expected.tolist()):
            assert got.embedding == pytest.approx(want, abs=1e-5)
        f = c.embeddings.create(model="enc", input="hello", encoding_format="float")
        assert f.data[0].embedding == pytest.approx(expected[0].tolist(), abs=1e-5)
        with pytest.raises(openai.BadRequestError):
            c.completions.create(model="enc", prompt="a")


def test_serve_command_rejects_bad_arguments(capsys):
    assert main(["serve", "nowhere", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", "nowhere"]) == 2
    assert "not found" in capsys.readouterr().err


def test_usage_counts_the_models_tokens_not_re_encoded_text(tmp_path_factory):
    """A byte-level model's tokens are UTF-8 bytes: a random model emits invalid sequences
    whose decoded text re-encodes to other lengths. Usage must report what was generated."""
    byte_model = attnkit.load(train(tmp_path_factory.mktemp("serve-byte"),
                                    "--data.tokenizer=byte"), device="cpu")
    with Server(create_app(byte_model, "bytes")) as s:
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", timeout=TIMEOUT, max_retries=0)
        for seed in range(3):
            r = c.completions.create(model="bytes", prompt="A", max_tokens=9, temperature=1.5,
                                     seed=seed)
            assert r.choices[0].finish_reason == "length"
            assert r.usage.completion_tokens == 9 and r.usage.prompt_tokens == 1


@pytest.mark.parametrize("family, words", [
    ("seq2seq", "whose attention pairs a source with a target"),
    ("lstm", "which has no attention"),
])
def test_attention_of_a_model_without_maps_over_one_text_is_a_400(family, words):
    """The attention endpoint asks ``abilities.attention_maps``; an encoder-decoder (whose maps
    need a source and a target) and an LSTM get a 400 saying why, not a server error."""
    import httpx

    from attnkit.config import LSTMConfig, RunConfig, Seq2SeqConfig
    from attnkit.models import build_model
    from attnkit.tokenizers import CharTokenizer

    tok = CharTokenizer(list("abc"), specials=["pad", "bos", "eos"])
    small = {"vocab_size": tok.vocab_size, "context_length": 8, "d_model": 16}
    cfg = (Seq2SeqConfig(**small, n_heads=2, n_encoder_layers=1, n_decoder_layers=1)
           if family == "seq2seq" else LSTMConfig(**small, n_layers=1))
    run = attnkit.Loaded(build_model(cfg).eval(), tok, RunConfig())
    with Server(create_app(run, "m")) as s:
        r = httpx.post(f"{s.url}/v1/attnkit/attention", json={"prompt": "ab"}, timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["code"] == "unsupported_model"
