"""The FastAPI application behind ``attnkit serve``.

OpenAI-compatible endpoints (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``,
``/v1/embeddings``), two JSON endpoints for the playground (``/v1/attnkit/next_token`` and
``/v1/attnkit/attention``), image classification (``/v1/attnkit/classify``), ``/health`` and
the playground page at ``/``.

One model answers every request, so generation runs in a worker thread per request and the
threads take turns through one lock: concurrent requests queue and are all answered. A
streaming client that disconnects sets its worker's stop flag, which ends its generation at
the next token.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from attnkit.data.images import image_to_tensor
from attnkit.errors import AttnkitError
from attnkit.generate import stream
from attnkit.generate.embed import embed_texts
from attnkit.generate.options import API, OptionError, check_sampling
from attnkit.interop.loaded import Loaded, unpack

STATIC = Path(__file__).parent / "static"
CHAT_FORMAT = "{role}: {content}\n"  # each message on its own line, then "assistant:"
CHAT_STOP = ("\nuser:", "\nsystem:")
MAX_STOP = 4
STREAM_OPTIONS = ("temperature", "top_k", "top_p", "seed", "stop")  # what a request hands stream()
# what /v1/attnkit/classify opens: common raster formats only, so an upload never reaches a
# plugin that runs an outside program (Pillow's EPS reader calls Ghostscript)
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
MAX_IMAGE_PIXELS = 4096 * 4096  # a small compressed file can declare a huge image: refused unread


class ApiError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(status_code=self.status, headers=headers, content={"error": {
            "message": self.message, "type": self.type, "param": self.param, "code": self.code}})


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """``role: content`` lines, one per message, then ``assistant:`` for the model to continue."""
    return "".join(CHAT_FORMAT.format(role=m["role"], content=m["content"]) for m in messages) + \
        "assistant:"


class StopFilter:
    """Cuts streamed text at the first stop string, holding back a tail that might begin one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        self.text += piece
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.sent = self.text[self.sent:cut], cut
            return out
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        end = max(len(self.text) - hold, self.sent)
        out, self.sent = self.text[self.sent:end], end
        return out

    def flush(self) -> str:
        if self.stopped:
            return ""
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


class Generator:
    """Runs ``attnkit.generate.stream`` in a worker thread, one generation at a time."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.lock = threading.Lock()

    async def pieces(self, prompt: str, max_tokens: int, params: dict[str, Any],
                     request: Request | None = None) -> AsyncIterator[tuple[str, int]]:
        """(text piece, tokens generated so far) of the continuation; stops early when
        ``request`` disconnects."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        kwargs = {k: v for k, v in params.items() if k in STREAM_OPTIONS and v is not None}
        done = object()

        def work() -> None:
            try:
                with self.lock:
                    if stop.is_set():
                        return
                    for chunk in stream(self.model, prompt, max_tokens, tokenizer=self.tokenizer,
                                        details=True, **kwargs):
                        loop.call_soon_threadsafe(queue.put_nowait, (chunk.text, chunk.tokens))
                        if stop.is_set():
                            break
            except Exception as e:  # noqa: BLE001 - handed to the request
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        threading.Thread(target=work, daemon=True, name="attnkit-generate").start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, Exception):
                    if isinstance(item, AttnkitError):
                        raise ApiError(400, str(item))
                    raise item
                yield item
                if request is not None and await request.is_disconnected():
                    return
        finally:
            stop.set()

    def run_sync(self, fn, *args):
        with self.lock:
            return fn(*args)


# ------------------------------------------------------------------ validation


def _check_type(body: dict, key: str, types: tuple, name: str, default=None):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types:
        raise ApiError(400, f"'{key}' must be {name}, got a boolean", param=key, code="invalid_type")
    if not isinstance(value, types):
        raise ApiError(400, f"'{key}' must be {name}, got {type(value).__name__}", param=key,
                       code="invalid_type")
    return value


def _check_values(**options) -> None:
    """:func:`check_sampling` (the CLI's check too), its refusal as a 400 naming the field."""
    try:
        check_sampling(**options, names=API)
    except OptionError as e:
        raise ApiError(400, str(e), param=e.option, code="invalid_value") from None


def _sampling(body: dict, default_max: int, limit: int, token_key: str = "max_tokens") -> dict:
    """The sampling fields of a completion request, every one checked before a response
    starts, so a stream never begins for a request that must fail."""
    max_tokens = _check_type(body, token_key, (int,), "an integer", default_max)
    if token_key != "max_tokens" and body.get(token_key) is None:
        max_tokens = _check_type(body, "max_tokens", (int,), "an integer", default_max)
    temperature = _check_type(body, "temperature", (int, float), "a number", 1.0)
    top_p = _check_type(body, "top_p", (int, float), "a number")
    top_k = _check_type(body, "top_k", (int,), "an integer")
    seed = _check_type(body, "seed", (int,), "an integer")
    n = _check_type(body, "n", (int,), "an integer", 1)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOP:
        stops = list(stop)
    else:
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOP} strings",
                       param="stop", code="invalid_type")
    stream = _check_type(body, "stream", (bool,), "a boolean", False)
    options = _check_type(body, "stream_options", (dict,), "an object", {})
    # OpenAI's temperature range, one choice per request, the server's max_tokens limit; the
    # numbers are compared as sent (a huge integer is refused, never overflows a float)
    _check_values(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, n=n, stop=stops,
                  max_new_tokens=max_tokens, max_temperature=2, max_n=1,
                  max_new_tokens_limit=limit)
    return {"max_tokens": max_tokens, "temperature": float(temperature),
            "top_p": None if top_p is None else float(top_p), "top_k": top_k, "seed": seed,
            "stop": stops, "stream": stream,
            "include_usage": bool(options.get("include_usage", False))}


def read_image(value: Any):
    """The Pillow image in a request's ``image`` field: the base64 of an image file, or a
    ``data:image/...;base64,`` URL. Every way it can be wrong is a 400 naming the problem."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str):
        got = "nothing" if value is None else type(value).__name__
        raise ApiError(400, f"'image' must be a string: the base64 of a PNG or JPEG file, or a "
                            f"data URL (got {got})", param="image", code="invalid_type")
    if value.startswith("data:"):
        head, comma, value = value.partition(",")
        if not comma or not head.endswith(";base64"):
            raise ApiError(400, "'image' is a data URL that is not base64 (send "
                                "data:image/png;base64,...)", param="image", code="invalid_value")
    try:  # whitespace is dropped: `base64` wraps its output every 76 characters
        data = base64.b64decode("".join(value.split()), validate=True)
    except ValueError as e:  # binascii.Error, or a character outside ASCII
        raise ApiError(400, f"'image' is not valid base64 ({e})", param="image",
                       code="invalid_value") from None
    if not data:
        raise ApiError(400, "'image' is empty", param="image", code="invalid_value")
    kinds = ", ".join(IMAGE_FORMATS)
    too_big = f"over the limit of {MAX_IMAGE_PIXELS} pixels"
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ApiError(400, f"'image' is {width}x{height} pixels, {too_big}", param="image",
                           code="invalid_value")
        image.load()
    except UnidentifiedImageError:
        raise ApiError(400, f"'image' holds {len(data)} bytes that are not an image Pillow reads "
                            f"({kinds})", param="image", code="invalid_value") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's own
        # limits, far above ours, met in open(); the warning is raised where warnings are errors
        raise ApiError(400, f"'image' is {too_big}", param="image", code="invalid_value") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ApiError(400, f"'image' is a damaged image file ({e})", param="image",
                       code="invalid_value") from None
    return image


# ------------------------------------------------------------------ the app


def create_app(run: Loaded | torch.nn.Module, model_name: str, api_key: str | None = None, *,
               tokenizer=None, labels: list[str] | None = None, max_tokens_limit: int = 1024,
               default_max_tokens: int = 16, max_body_bytes: int = 1_000_000) -> FastAPI:
    """A FastAPI app that serves ``run`` (what :func:`attnkit.load` returned, or a bare model
    with its ``tokenizer`` or, for an image model, its class ``labels``) as ``model_name``.
    The model is served as it is given: a caller that wants the CPU back-end applies
    :func:`attnkit.backends.accelerate` first, as ``attnkit serve`` does.

    What the model can do decides what it answers: the completions and ``next_token`` need
    ``abilities.generates``, ``/v1/embeddings`` ``abilities.embeds``, ``attention``
    ``abilities.attention_maps`` and ``/v1/attnkit/classify`` ``abilities.images``; every
    text endpoint needs a tokenizer (an image model has none). A model without the ability
    gets a 400 ``unsupported_model`` naming its family.

    ``api_key``: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
    ``max_tokens_limit``: the largest ``max_tokens`` a request may ask for.
    ``max_body_bytes``: larger request bodies are refused with 413.
    """
    model, tok, labels, _ = unpack(run, tokenizer, labels)
    abilities = model.abilities
    if tok is None and not abilities.images:
        raise AttnkitError("the model has no tokenizer (load it with attnkit.load)")
    if abilities.images and labels is not None and len(labels) != model.cfg.n_labels:
        raise AttnkitError(f"{len(labels)} labels for a model of {model.cfg.n_labels} classes")
    family = model.cfg.family  # named in refusals, never branched on
    context = model.cfg.context_length
    can_generate = abilities.generates
    gen = Generator(model, tok)
    created = int(time.time())
    app = FastAPI(title="attnkit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.generator = gen

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), kind).response()

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        return ApiError(500, f"internal error: {type(exc).__name__}", "server_error").response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           "authentication_error", code="invalid_api_key")

    async def read_json(request: Request) -> dict:
        authorize(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise ApiError(413, f"request body over {max_body_bytes} bytes", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise ApiError(413, f"request body over {max_body_bytes} bytes", code="body_too_large")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
        except RecursionError:  # json parses nesting recursively: [[[[...]]]] runs out of stack
            raise ApiError(400, "the request body is nested too deeply", code="invalid_json") from None
        except ValueError:  # an integer over Python's 4300-digit limit for parsing one
            raise ApiError(400, "the request body holds a number with too many digits",
                           code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    def check_model(body: dict) -> None:
        name = body.get("model", model_name)
        if not isinstance(name, str):
            raise ApiError(400, "'model' must be a string", param="model", code="invalid_type")
        if name != model_name:
            raise ApiError(404, f"the model '{name}' does not exist (this server serves "
                                f"'{model_name}')", param="model", code="model_not_found")

    def encode(prompt: str, param: str = "prompt") -> list[int]:
        try:
            ids = tok.encode(prompt)
        except AttnkitError as e:
            raise ApiError(400, str(e), param=param, code="invalid_value") from None
        if not ids:
            raise ApiError(400, "the prompt is empty after tokenization", param=param,
                           code="invalid_value")
        if len(ids) > context:
            raise ApiError(400, f"the prompt is {len(ids)} tokens but the model's context is "
                                f"{context}", param=param, code="context_length_exceeded")
        return ids

    def require_text() -> None:
        if tok is None:  # only an image model is served without a tokenizer
            raise ApiError(400, f"'{model_name}' is a {family} model, which reads images, not "
                                f"text (POST /v1/attnkit/classify)", param="model",
                           code="unsupported_model")

    def require_generation() -> None:
        require_text()
        if not can_generate:
            raise ApiError(400, f"'{model_name}' is a {family} model, which does not continue "
                                f"text", param="model", code="unsupported_model")

    async def complete(prompt: str, p: dict, request: Request, stops: list[str]
                       ) -> AsyncIterator[tuple[str, str | None, int]]:
        """(text piece, None, tokens so far) ... then ("", finish_reason, tokens generated):
        the token count is the model's own, so usage is exact whatever the tokenizer."""
        filt = StopFilter(stops)
        tokens = 0
        async for piece, tokens in gen.pieces(prompt, p["max_tokens"], p, request):
            out = filt.feed(piece)
            if out:
                yield out, None, tokens
            if filt.stopped:
                yield "", "stop", tokens
                return
        rest = filt.flush()
        if rest:
            yield rest, None, tokens
        yield "", ("length" if tokens >= p["max_tokens"] else "stop"), tokens

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def streamed(prompt: str, p: dict, request: Request, stops: list[str], n_prompt: int,
                 piece_chunk, empty_chunk: dict, first: dict | None = None) -> StreamingResponse:
        """Server-sent events: ``first`` (if any), one ``piece_chunk(text, finish)`` per piece,
        the usage chunk when asked for, then ``[DONE]``; an error mid-stream is an event."""
        async def events():
            if first is not None:
                yield sse(first)
            tokens = 0
            try:
                async for piece, finish, n in complete(prompt, p, request, stops):
                    tokens = n
                    yield sse(piece_chunk(piece, finish))
            except ApiError as e:
                yield sse({"error": json.loads(e.response().body)["error"]})
            if p["include_usage"]:
                yield sse({**empty_chunk, "choices": [], "usage": usage(n_prompt, tokens)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def whole(prompt: str, p: dict, request: Request, stops: list[str]
                    ) -> tuple[str, str | None, int]:
        """The whole continuation, its finish reason and the tokens generated."""
        text, finish, tokens = "", None, 0
        async for piece, fin, n in complete(prompt, p, request, stops):
            text, finish, tokens = text + piece, fin or finish, n
        return text, finish, tokens

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    # -------------------------------------------------------------- routes

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return HTMLResponse((STATIC / "playground.html").read_text(encoding="utf-8"))

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                             "created": created, "owned_by": "attnkit"}]}

    @app.get("/v1/models/{name}")
    async def one_model(name: str, request: Request):
        authorize(request)
        check_model({"model": name})
        return {"id": model_name, "object": "model", "created": created, "owned_by": "attnkit"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        check_model(body)
        require_generation()
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string", param="prompt", code="invalid_type")
        p = _sampling(body, default_max_tokens, max_tokens_limit)
        n_prompt = len(encode(prompt))
        cid, now = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text: str, finish: str | None) -> dict:
            return {"id": cid, "object": "text_completion", "created": now, "model": model_name,
                    "choices": [{"index": 0, "text": text, "logprobs": None,
                                 "finish_reason": finish}]}

        if p["stream"]:
            return streamed(prompt, p, request, p["stop"], n_prompt, chunk, chunk("", None))
        text, finish, tokens = await whole(prompt, p, request, p["stop"])
        return {**chunk(text, finish), "usage": usage(n_prompt, tokens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request)
        check_model(body)
        require_generation()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list", param="messages",
                           code="invalid_type")
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise ApiError(400, f"messages[{i}] must be an object with string 'role' and "
                                    f"'content'", param=f"messages[{i}]", code="invalid_type")
        p = _sampling(body, default_max_tokens, max_tokens_limit, "max_completion_tokens")
        prompt = chat_prompt(messages)
        n_prompt = len(encode(prompt, "messages"))
        stops = p["stop"] + list(CHAT_STOP)
        cid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(delta: dict, finish: str | None) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": now,
                    "model": model_name, "choices": [{"index": 0, "delta": delta,
                                                      "logprobs": None, "finish_reason": finish}]}

        if p["stream"]:
            return streamed(prompt, p, request, stops, n_prompt,
                            lambda piece, finish: chunk({"content": piece} if piece else {}, finish),
                            chunk({}, None), first=chunk({"role": "assistant", "content": ""}, None))
        text, finish, tokens = await whole(prompt, p, request, stops)
        return {"id": cid, "object": "chat.completion", "created": now, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": finish}],
                "usage": usage(n_prompt, tokens)}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await read_json(request)
        check_model(body)
        require_text()
        if not abilities.embeds:
            raise ApiError(400, f"'{model_name}' is a {family} model; embeddings come from an "
                                f"encoder model", param="model", code="unsupported_model")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
            raise ApiError(400, "'input' must be a string or a non-empty list of strings",
                           param="input", code="invalid_type")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be 'float' or 'base64'",
                           param="encoding_format", code="invalid_value")
        for t in texts:
            encode(t, "input")

        def vectors_of() -> tuple[torch.Tensor, list[int]]:
            return embed_texts(model, texts, tokenizer=tok)

        vectors, lengths = await asyncio.to_thread(gen.run_sync, vectors_of)
        data = []
        for i, v in enumerate(vectors.tolist()):
            emb: Any = v if fmt == "float" else \
                base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(lengths)
        return {"object": "list", "data": data, "model": model_name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    @app.post("/v1/attnkit/next_token")
    async def next_token(request: Request):
        body = await read_json(request)
        require_generation()
        prompt = _check_type(body, "prompt", (str,), "a string")
        if prompt is None:
            raise ApiError(400, "'prompt' is required", param="prompt", code="invalid_type")
        temperature = _check_type(body, "temperature", (int, float), "a number", 1.0)
        top = _check_type(body, "top", (int,), "an integer", 10)
        _check_values(temperature=temperature, max_temperature=2)  # as for completions
        if not 1 <= top <= 100:
            raise ApiError(400, f"'top' must be in 1..100, got {top}", param="top",
                           code="invalid_value")
        temperature = float(temperature)
        ids = encode(prompt)

        def probs() -> torch.Tensor:
            with torch.inference_mode():
                device = next(model.parameters()).device
                logits = model(torch.tensor([ids], device=device))[0][0, -1].float().cpu()
            if temperature == 0:
                return torch.nn.functional.one_hot(logits.argmax(), logits.numel()).float()
            return torch.softmax(logits / temperature, dim=-1)

        p = await asyncio.to_thread(gen.run_sync, probs)
        values, idx = p.topk(min(top, p.numel()))
        return {"tokens": [{"id": int(i), "token": _piece(tok, int(i)), "prob": float(v)}
                           for v, i in zip(values, idx)]}

    @app.post("/v1/attnkit/attention")
    async def attention(request: Request):
        body = await read_json(request)
        prompt = _check_type(body, "prompt", (str,), "a string")
        if prompt is None:
            raise ApiError(400, "'prompt' is required", param="prompt", code="invalid_type")
        layer = _check_type(body, "layer", (int,), "an integer", 0)
        head = _check_type(body, "head", (int,), "an integer", 0)
        require_text()
        if not abilities.attention_maps:
            why = ("whose attention pairs a source with a target (attnkit inspect RUN --prompt "
                   "SOURCE draws it)" if abilities.translates else "which has no attention")
            raise ApiError(400, f"'{model_name}' is a {family} model, {why}",
                           code="unsupported_model")
        ids = encode(prompt)

        def maps() -> list[torch.Tensor]:
            device = next(model.parameters()).device
            return model.attention_maps(torch.tensor([ids], device=device))

        weights = await asyncio.to_thread(gen.run_sync, maps)
        n_layers, n_heads = len(weights), weights[0].shape[1]
        if not 0 <= layer < n_layers or not 0 <= head < n_heads:
            raise ApiError(400, f"layer must be in 0..{n_layers - 1} and head in 0..{n_heads - 1}",
                           code="invalid_value")
        matrix = weights[layer][0, head].float().cpu()
        return {"tokens": [_piece(tok, i) for i in ids], "layer": layer, "head": head,
                "n_layers": n_layers, "n_heads": n_heads,
                "matrix": [[round(x, 5) for x in row] for row in matrix.tolist()]}

    @app.post("/v1/attnkit/classify")
    async def classify(request: Request):
        body = await read_json(request)
        check_model(body)
        if not abilities.images:
            raise ApiError(400, f"'{model_name}' is a {family} model, which does not read images",
                           param="model", code="unsupported_model")
        top_k = _check_type(body, "top_k", (int,), "an integer")
        if top_k is not None and top_k < 1:
            raise ApiError(400, f"'top_k' must be at least 1, got {top_k}", param="top_k",
                           code="invalid_value")
        size, channels = model.cfg.image_size, model.cfg.channels

        def prepare() -> torch.Tensor:  # (C, H, W), exactly as training prepares an image
            return image_to_tensor(read_image(body.get("image")), size, channels)

        # decoded off the event loop and outside the model's lock: only the forward pass queues
        pixels = await asyncio.to_thread(prepare)

        def probs() -> torch.Tensor:
            with torch.inference_mode():
                device = next(model.parameters()).device
                logits = model(pixels[None].to(device))[0][0].float().cpu()  # (L,)
            return torch.softmax(logits, dim=-1)

        p = await asyncio.to_thread(gen.run_sync, probs)
        values, idx = torch.sort(p, descending=True, stable=True)
        names = labels or [str(i) for i in range(p.numel())]
        top = [{"label": names[int(i)], "id": int(i), "prob": float(v)}
               for v, i in zip(values[:top_k], idx[:top_k])]
        return {"model": model_name, "label": top[0]["label"], "probs": top}

    return app


def _piece(tok, i: int) -> str:
    try:
        return tok.decode([i])
    except Exception:  # noqa: BLE001 - a special or partial token
        return f"<{i}>"
