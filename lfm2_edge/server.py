"""``lfm2-edge serve``: the OpenAI chat-completions API on one loaded model.

The same client code that talks to vLLM (``openai`` package, ``image_url`` parts,
``extra_body={"min_p": ..., "repetition_penalty": ...}``) talks to this server. Requests
are served in arrival order by a pool of ``n_parallel`` model instances (one by
default; weights are memory-mapped, so more instances share them); a full queue answers
429. Every failure is an OpenAI-style error body with a 4xx status, and the server keeps
serving. A client that disconnects mid-stream stops its generation.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lfm2_edge.errors import ContextOverflowError, ImageError, Lfm2EdgeError
from lfm2_edge.tools import TOOL_CALL_START, parse_answer

__all__ = ["ServerConfig", "create_app"]

# Sampling fields a request may carry (OpenAI's, plus vLLM's extra_body ones).
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty")
_INT_FIELDS = ("top_k", "seed", "max_tokens", "max_completion_tokens")


@dataclass
class ServerConfig:
    """How a server answers; the model(s) it answers with are given to :func:`create_app`."""

    model_names: list[str]  # the first is the id /v1/models reports; all are accepted
    api_key: str | None = None
    max_images: int = 1  # vLLM's --limit-mm-per-prompt '{"image": N}'
    allow_remote_images: bool = False
    max_queue: int = 64  # requests waiting or running; more get 429
    max_body_bytes: int = 32 * 1024 * 1024
    default_max_tokens: int = 512


class ApiError(Exception):
    """An OpenAI-style error: status, message, type, code, param."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _error_for(exc: Lfm2EdgeError) -> ApiError:
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, ImageError):
        return ApiError(400, str(exc), code="invalid_image", param="messages")
    return ApiError(400, str(exc), param="messages")


# -- request parsing -------------------------------------------------------------------


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    sampling: dict[str, Any]  # sampling fields, and tools / tool_choice / response_format
    stream: bool
    include_usage: bool
    model: str

    @property
    def tool_mode(self) -> str | None:
        """None (no tools), "auto" (calls may appear in the text) or "forced" (the whole answer is a call)."""
        if not self.sampling.get("tools") or self.sampling.get("tool_choice") == "none":
            return None
        return "forced" if isinstance(self.sampling.get("tool_choice"), Mapping) else "auto"


def parse_request(body: Any, config: ServerConfig) -> ChatRequest:
    """Check a chat-completions body; raise :class:`ApiError` naming the bad field."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model", config.model_names[0])
    if model not in config.model_names:
        served = ", ".join(config.model_names)
        raise ApiError(
            404,
            f"model {model!r} is not served here; this server serves {served}",
            code="model_not_found",
            param="model",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    checked = [_check_message(m, i, config) for i, m in enumerate(messages)]
    n_images = sum(1 for m in checked for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")
    if n_images > config.max_images:
        raise ApiError(
            400,
            f"the request has {n_images} images; this server takes at most {config.max_images} per prompt "
            "(start it with --limit-mm-per-prompt '{\"image\": N}')",
            param="messages",
        )
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    sampling: dict[str, Any] = {}
    for name in _FLOAT_FIELDS:
        if body.get(name) is not None:
            sampling[name] = _number(body[name], name, float)
    for name in _INT_FIELDS:
        if body.get(name) is not None:
            sampling[name] = _number(body[name], name, int)
    if "max_completion_tokens" in sampling:
        sampling["max_tokens"] = sampling.pop("max_completion_tokens")
    if "max_tokens" in sampling and sampling["max_tokens"] < 1:
        raise ApiError(400, "'max_tokens' must be at least 1", param="max_tokens")
    sampling.setdefault("max_tokens", config.default_max_tokens)
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise ApiError(400, "'stop' must be a string or a list of up to 4 strings", param="stop")
        sampling["stop"] = stop
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
            raise ApiError(400, "'tools' must be a list of function tools", param="tools")
        if tools:
            sampling["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        if choice == "required":
            raise ApiError(
                400, "tool_choice 'required' is not supported; name the function instead", param="tool_choice"
            )
        if choice not in ("auto", "none") and not isinstance(choice, Mapping):
            raise ApiError(400, "'tool_choice' must be 'auto', 'none' or a named function", param="tool_choice")
        sampling["tool_choice"] = choice
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, Mapping):
            raise ApiError(400, "'response_format' must be an object", param="response_format")
        sampling["response_format"] = response_format
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, Mapping) and options.get("include_usage"))
    return ChatRequest(checked, sampling, stream, include_usage, model)


def _number(value: Any, name: str, kind: type) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
    ):
        raise ApiError(400, f"'{name}' must be a number", param=name)
    if name in ("temperature", "top_p", "min_p", "repetition_penalty", "top_k") and value < 0:
        raise ApiError(400, f"'{name}' must not be negative", param=name)
    return kind(value)


def _check_message(raw: Any, index: int, config: ServerConfig) -> dict[str, Any]:
    param = f"messages[{index}]"
    if not isinstance(raw, Mapping):
        raise ApiError(400, f"{param} must be an object", param=param)
    role = raw.get("role")
    if role not in ("system", "user", "assistant", "tool"):
        raise ApiError(400, f"{param}.role must be system, user, assistant or tool", param=param)
    calls = raw.get("tool_calls")
    extra = {"tool_calls": calls} if role == "assistant" and isinstance(calls, list) and calls else {}
    content = raw.get("content")
    if content is None or isinstance(content, str):
        return {"role": role, "content": [{"type": "text", "text": content or ""}], **extra}
    if not isinstance(content, list):
        raise ApiError(400, f"{param}.content must be a string or a list of parts", param=param)
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, Mapping) else ref
            parts.append({"type": "image_url", "image_url": {"url": _check_image_url(url, param, config)}})
        else:
            raise ApiError(400, f"{param} has a content part of type {kind!r}; use 'text' or 'image_url'", param=param)
    return {"role": role, "content": parts, **extra}


def _check_image_url(url: Any, param: str, config: ServerConfig) -> str:
    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{param}: image_url needs a 'url' string", param=param)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return url
    if scheme in ("http", "https"):
        if not config.allow_remote_images:
            raise ApiError(
                400,
                f"{param}: this server does not fetch image URLs; send the image as a data: URI "
                "(or start the server with --allow-remote-images)",
                param=param,
            )
        return url
    raise ApiError(
        400, f"{param}: image_url must be a data: URI or an http(s) URL, not {scheme or 'a path'}", param=param
    )


# -- the engine: a FIFO queue in front of a pool of models -----------------------------


class Engine:
    """Runs chats on a pool of models, in arrival order, off the event loop."""

    def __init__(self, models: Sequence[Any], max_queue: int) -> None:
        self._free: queue.Queue[Any] = queue.Queue()
        for m in models:
            self._free.put(m)
        self._pool = ThreadPoolExecutor(max_workers=len(models), thread_name_prefix="lfm2-edge")
        self.max_queue = max_queue
        self._pending = 0
        self._lock = threading.Lock()
        self.served = 0  # answers completed
        self.cancelled = 0  # streams stopped because their client went away

    @property
    def queued(self) -> int:
        return self._pending

    def _admit(self) -> None:
        with self._lock:
            if self._pending >= self.max_queue:
                raise ApiError(
                    429,
                    f"the server is busy ({self._pending} requests queued); retry shortly",
                    type="rate_limit_error",
                    code="queue_full",
                )
            self._pending += 1

    def _release(self, served: bool = False, cancelled: bool = False) -> None:
        with self._lock:
            self._pending -= 1
            self.served += served
            self.cancelled += cancelled

    async def complete(self, request: ChatRequest) -> Any:
        self._admit()
        served = False
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool, self._run, request)
            served = True
            return result
        finally:
            self._release(served=served)

    def _run(self, request: ChatRequest) -> Any:
        model = self._free.get()
        try:
            return model.chat(request.messages, **request.sampling)
        finally:
            self._free.put(model)

    async def stream(self, request: ChatRequest) -> AsyncIterator[tuple[str, Any]]:
        """Yield ("piece", text) events, then ("done", ChatResult). Closing the iterator
        (a client gone) stops the generation at its next token."""
        self._admit()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()
        outcome = {"served": False, "cancelled": False}

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        def work() -> None:
            model = self._free.get()
            try:
                stream = model.chat(request.messages, stream=True, **request.sampling)
                try:
                    for piece in stream:
                        if cancel.is_set():
                            outcome["cancelled"] = True
                            return
                        emit("piece", piece)
                finally:
                    stream.close()
                outcome["served"] = True
                emit("done", stream.result)
            except BaseException as exc:  # handed to the request's coroutine
                emit("error", exc)
            finally:
                self._free.put(model)

        future = loop.run_in_executor(self._pool, work)
        future.add_done_callback(lambda f: self._release(**outcome))  # once the model is free again
        try:
            while True:
                kind, value = await events.get()
                if kind == "error":
                    raise value
                yield kind, value
                if kind == "done":
                    return
        finally:
            cancel.set()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- the app ----------------------------------------------------------------------------


def _message(result: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if result.tool_calls:
        message["content"] = result.text or None
        message["tool_calls"] = [c.to_openai() for c in result.tool_calls]
    return message


def _usage(result: Any) -> dict[str, Any]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def create_app(
    models: Sequence[Any], config: ServerConfig, *, on_shutdown: Callable[[], None] | None = None
) -> FastAPI:
    """A FastAPI app serving ``models`` (instances of one model, used as a pool)."""
    engine = Engine(models, config.max_queue)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        engine.shutdown()
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="lfm2-edge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    created = int(time.time())

    def error_response(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v1/") and config.api_key is not None:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {config.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response(
                    ApiError(
                        401,
                        "a valid API key is required (Authorization: Bearer KEY)",
                        type="authentication_error",
                        code="invalid_api_key",
                    )
                )
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > config.max_body_bytes):
            return error_response(ApiError(413, f"the request body is over {config.max_body_bytes} bytes"))
        try:
            return await call_next(request)
        except Exception as exc:  # the server keeps serving
            return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "queued": engine.queued, "served": engine.served, "cancelled": engine.cancelled}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": created, "owned_by": "lfm2-edge"} for n in config.model_names
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > config.max_body_bytes:
            return error_response(ApiError(413, f"the request body is over {config.max_body_bytes} bytes"))
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error_response(ApiError(400, f"the request body is not valid JSON ({exc})"))
        try:
            req = parse_request(body, config)
        except ApiError as err:
            return error_response(err)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if not req.stream:
            try:
                result = await engine.complete(req)
            except ApiError as err:
                return error_response(err)
            except Lfm2EdgeError as exc:
                return error_response(_error_for(exc))
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.model,
                "choices": [{"index": 0, "message": _message(result), "finish_reason": result.finish_reason}],
                "usage": _usage(result),
            }
        try:
            events = engine.stream(req)
            first = await events.__anext__()  # errors before the first token are plain 4xx answers
        except ApiError as err:
            return error_response(err)
        except Lfm2EdgeError as exc:
            return error_response(_error_for(exc))
        return StreamingResponse(_sse(events, first, req, completion_id), media_type="text/event-stream")

    return app


class _ToolHoldback:
    """Streams text as it comes, but holds back everything from a tool-call marker on
    (and, for a forced call, everything): those bytes become ``tool_calls``, not text."""

    def __init__(self, mode: str | None) -> None:
        self.mode = mode
        self.text = ""
        self.sent = 0
        self.held = False

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.mode is None:
            return self._send(len(self.text))
        if self.mode == "forced" or self.held:
            return ""
        at = self.text.find(TOOL_CALL_START, self.sent)
        if at != -1:
            self.held = True
            return self._send(at)
        return self._send(len(self.text) - len(TOOL_CALL_START) + 1)  # a marker may be starting

    def finish(self, result: Any) -> tuple[str, tuple[Any, ...]]:
        if not result.tool_calls:
            return self._send(len(self.text)), ()
        rest = self.text[self.sent :]
        if self.mode == "forced":
            return "", result.tool_calls
        return parse_answer(rest).content, result.tool_calls

    def _send(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : upto], upto
        return out


async def _sse(
    events: AsyncIterator[tuple[str, Any]], first: tuple[str, Any], req: ChatRequest, completion_id: str
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        data = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    try:
        yield chunk({"role": "assistant", "content": ""})
        hold = _ToolHoldback(req.tool_mode)
        event: tuple[str, Any] | None = first
        while event is not None:
            kind, value = event
            if kind == "piece":
                if text := hold.feed(value):
                    yield chunk({"content": text})
            elif kind == "done":
                text, calls = hold.finish(value)
                if text:
                    yield chunk({"content": text})
                if calls:
                    deltas = [{"index": i, **c.to_openai()} for i, c in enumerate(calls)]
                    yield chunk({"tool_calls": deltas})
                yield chunk({}, value.finish_reason)
                if req.include_usage:
                    usage = {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": req.model,
                        "choices": [],
                        "usage": _usage(value),
                    }
                    yield f"data: {json.dumps(usage)}\n\n".encode()
                break
            event = await events.__anext__()
        yield b"data: [DONE]\n\n"
    except Lfm2EdgeError as exc:
        yield f"data: {json.dumps(_error_for(exc).body())}\n\n".encode()
    finally:
        await events.aclose()  # type: ignore[attr-defined]
