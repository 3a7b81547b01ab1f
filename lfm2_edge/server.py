"""``lfm2-edge serve``: the OpenAI chat-completions API on one loaded model.

The same client code that talks to vLLM (``openai`` package, ``image_url`` parts,
``extra_body={"min_p": ..., "repetition_penalty": ...}``) talks to this server. Requests
share one llama.cpp context: each gets a sequence (``serve --slots N``), and every step
decodes one token for all of them in one batch (:mod:`lfm2_edge.batching`); requests
beyond the free slots wait in arrival order, and a full queue answers 429. Every
failure is an OpenAI-style error body with a 4xx status, and the server keeps serving.
A client that disconnects mid-stream stops its generation.

Browsers: pages from localhost origins (any port, http or https) may call the API, others
only when ``allowed_origins`` names them; a POST must be JSON (415 otherwise), so a page
cannot start a generation with a "simple" cross-origin request that skips the preflight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lfm2_edge.errors import ContextOverflowError, Lfm2EdgeError
from lfm2_edge.holdback import HoldBack
from lfm2_edge.results import ChatResult
from lfm2_edge.tools import TOOL_CALL_START, parse_answer
from lfm2_edge.wire import (
    SSE_DONE,
    ApiError,
    ChatRequest,
    RequestLimits,
    api_error,
    chunk_body,
    completion_body,
    overflow_error,
    parse_chat_request,
    parse_json_body,
    sse,
)

__all__ = ["ServerConfig", "create_app"]


@dataclass
class ServerConfig(RequestLimits):
    """How a server answers; the model(s) it answers with are given to :func:`create_app`.

    ``model_names``: the first is the id /v1/models reports; all are accepted.
    ``max_images``: vLLM's --limit-mm-per-prompt '{"image": N}'.
    ``default_max_tokens``: for requests without max_tokens (None: until the context is full).
    ``allowed_origins``: browser origins allowed besides localhost ones ("*": any).
    ``context_size``: taken from the models' ``n_ctx`` when not given.
    """

    api_key: str | None = None
    max_queue: int = 64  # requests waiting or running; more get 429
    max_body_bytes: int = 32 * 1024 * 1024
    allow_private_image_urls: bool = False
    max_image_pixels: int = 16_000_000  # per image, read from its header before decoding
    max_request_pixels: int = 32_000_000  # all of a request's images together
    image_fetch_timeout_s: float = 20.0  # a remote image URL, fetched whole, redirects included
    allowed_origins: Sequence[str] = ()


# -- the engine: a FIFO queue in front of batched models ------------------------------


class Ticket:
    """A request's place in the queue, taken before its body is read; its ``cancel``
    event stops the request wherever it is (queued, evaluating or generating)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.cancel = threading.Event()
        self.outcome = "failed"  # served, cancelled or failed
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.engine._release(self.outcome)


class Engine:
    """Runs chats on batched models (:class:`lfm2_edge.batching.Scheduler`): each model
    answers as many requests at once as its context has sequences (``serve --slots``),
    decoding them together; several models are replicas, and a request goes to the one
    with the least work. Requests beyond the free slots wait in arrival order."""

    def __init__(self, models: Sequence[Any], max_queue: int) -> None:
        from lfm2_edge.batching import Scheduler

        self._schedulers = [Scheduler(m) for m in models]
        self._models = list(models)
        self.max_queue = max_queue
        self._pending = 0
        self._lock = threading.Lock()
        self.served = 0  # answers completed
        self.cancelled = 0  # requests stopped because their client went away

    @property
    def queued(self) -> int:
        """Requests waiting or running."""
        return self._pending

    @property
    def slots(self) -> dict[str, int]:
        """Sequences in all: busy (a request holds it), free, and requests waiting for one."""
        total = sum(s.n_slots for s in self._schedulers)
        busy = sum(s.busy for s in self._schedulers)
        return {"total": total, "busy": busy, "free": total - busy, "waiting": sum(s.waiting for s in self._schedulers)}

    def admit(self) -> Ticket:
        """A place in the queue, or a 429 when it is full."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise ApiError(
                    429,
                    f"the server is busy ({self._pending} requests queued); retry shortly",
                    type="rate_limit_error",
                    code="queue_full",
                )
            self._pending += 1
        return Ticket(self)

    def _release(self, outcome: str) -> None:
        with self._lock:
            self._pending -= 1
            self.served += outcome == "served"
            self.cancelled += outcome == "cancelled"

    async def run(self, ticket: Ticket, request: ChatRequest) -> AsyncIterator[tuple[str, Any]]:
        """Yield ("piece", text) events, then ("done", ChatResult). Setting
        ``ticket.cancel`` (or closing the iterator) stops the request: a queued one never
        reaches a sequence, a running one frees its sequence at the next step. The ticket
        is released once its sequence is free again."""
        from lfm2_edge.batching import Job

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = ticket.cancel
        scheduler = min(self._schedulers, key=lambda s: (s.load - s.n_slots, s.load))
        outcomes = {"done": "served", "cancelled": "cancelled", "error": "failed"}

        def ended(kind: str, value: Any) -> None:  # on the event loop
            ticket.outcome = outcomes[kind]
            ticket.release()
            events.put_nowait((kind, value))

        def emit(kind: str, value: Any) -> None:  # from the scheduler's thread
            if kind in outcomes:
                loop.call_soon_threadsafe(ended, kind, value)
            else:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        try:
            chat = await asyncio.to_thread(scheduler.model.prepare, request.messages, **request.options)
        except BaseException:
            ticket.release()
            raise
        scheduler.submit(Job(chat, emit, cancel, limit=request.max_tokens))
        try:
            while True:
                kind, value = await events.get()
                if kind == "error":
                    raise value
                if kind == "cancelled":
                    raise ApiError(499, "the request was cancelled: its client went away", code="cancelled")
                yield kind, value
                if kind == "done":
                    return
        finally:
            cancel.set()

    def shutdown(self) -> None:
        """Finish the answers being generated, cancel those waiting for a slot."""
        for scheduler in self._schedulers:
            scheduler.shutdown()


# -- the app ----------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused past ``limit`` bytes whether or not it declared its length."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise ApiError(413, f"the request body is over {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes")
        parts.append(part)
    return b"".join(parts)


async def _load_images(req: ChatRequest, config: ServerConfig) -> None:
    """Fetch and decode the request's images off the model worker, within the request's
    pixel budget (counted from the headers before decoding) and a total deadline for
    remote URLs; the messages then carry decoded images."""
    from lfm2_edge.images import load_image

    budget = [config.max_request_pixels]

    def load(url: str) -> Any:
        image = load_image(
            url,
            allow_remote=config.allow_remote_images,
            allow_private=config.allow_private_image_urls,
            max_pixels=min(config.max_image_pixels, budget[0]),
            timeout=config.image_fetch_timeout_s,
        )
        budget[0] -= image.width * image.height
        return image

    for message in req.messages:
        for i, part in enumerate(message["content"]):
            if part.get("type") == "image_url":
                image = await asyncio.to_thread(load, part["image_url"]["url"])
                message["content"][i] = {"type": "image", "image": image}


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` when the client goes away, while its request waits or runs."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.1)


def create_app(
    models: Sequence[Any], config: ServerConfig, *, on_shutdown: Callable[[], None] | None = None
) -> FastAPI:
    """A FastAPI app serving ``models`` (replicas of one model, each batching as many
    requests as its context has sequences: ``n_seq_max``)."""
    from lfm2_edge import responses

    if config.context_size is None and isinstance(getattr(models[0], "n_ctx_per_seq", None), int):
        config = dataclasses.replace(config, context_size=models[0].n_ctx_per_seq)
    engine = Engine(models, config.max_queue)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        engine.shutdown()
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="lfm2-edge", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    created = int(time.time())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes and methods get an OpenAI-shaped body too, not FastAPI's {"detail": ...}.
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            message = f"{where} is not served here; this server serves {_ROUTES}"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("allow", "")
            message = f"{where}: method not allowed on this endpoint" + (f" (allowed: {allowed})" if allowed else "")
        else:
            message = str(exc.detail)
        response = error_response(ApiError(exc.status_code, message, code=_CODES.get(exc.status_code)))
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:  # the server keeps serving
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    if config.api_key is not None:
        # A plain ASGI wrapper, not @app.middleware: that one hides client disconnects from handlers.
        app.add_middleware(_KeyCheck, config=config)
    # Added last, so it runs first: preflights never need the key, and errors carry CORS headers.
    app.add_middleware(_BrowserGuard, origins=origin_matcher(config.allowed_origins))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "queued": engine.queued,
            "served": engine.served,
            "cancelled": engine.cancelled,
            "slots": engine.slots,
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": created, "owned_by": "lfm2-edge"} for n in config.model_names
            ],
        }

    async def start(
        request: Request, parse: Callable[[Any], ChatRequest]
    ) -> tuple[ChatRequest, AsyncIterator[tuple[str, Any]], tuple[str, Any]] | JSONResponse:
        """Admit, read, check and start a request: its first event (every event, when it
        does not stream), or the error answer; errors before the first token are plain 4xx."""
        try:
            ticket = engine.admit()  # before the body is read: a full queue costs nothing
        except ApiError as err:
            return error_response(err)
        watcher: asyncio.Task[None] | None = None
        events: AsyncIterator[tuple[str, Any]] | None = None
        req: ChatRequest | None = None
        try:
            req = parse(parse_json_body(await _read_body(request, config.max_body_bytes)))
            watcher = asyncio.create_task(_watch_disconnect(request, ticket.cancel))
            await _load_images(req, config)
            events = engine.run(ticket, req)  # from here on the engine releases the ticket
            first = await events.__anext__()
            if not req.stream:
                while first[0] != "done":
                    first = await events.__anext__()
        except (ApiError, Lfm2EdgeError) as exc:
            return error_response(as_api_error(exc, req, config))
        finally:
            if events is None:  # failed (or the client left) before reaching the engine
                ticket.release()
            if watcher is not None:
                watcher.cancel()  # a streaming response notices a disconnect itself
        return req, events, first

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        started = await start(request, lambda body: parse_chat_request(body, config))
        if isinstance(started, JSONResponse):
            return started
        req, events, first = started
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            return StreamingResponse(_sse(events, first, req, completion_id, config), media_type="text/event-stream")
        await events.aclose()  # type: ignore[attr-defined]
        return completion_body(first[1], completion_id, req.model, int(time.time()))

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Any:
        started = await start(request, lambda body: responses.parse_request(body, config))
        if isinstance(started, JSONResponse):
            return started
        req, events, first = started
        assert isinstance(req, responses.ResponsesRequest)
        response_id = f"resp_{uuid.uuid4().hex}"
        if req.stream:
            stream = responses.events(events, first, req, response_id, lambda e: as_api_error(e, req, config))
            return StreamingResponse(stream, media_type="text/event-stream")
        await events.aclose()  # type: ignore[attr-defined]
        return responses.response_body(first[1], req, response_id, int(time.time()))

    return app


_ROUTES = "POST /v1/chat/completions, POST /v1/responses, GET /v1/models and GET /health"
_CODES = {404: "not_found", 405: "method_not_allowed"}


def as_api_error(exc: Exception, req: ChatRequest | None, config: ServerConfig) -> ApiError:
    """The answer for an error raised while serving ``req``: a context overflow in
    OpenAI's words (which clients match), a typed error naming the field it is about."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ContextOverflowError) and config.context_size is not None:
        completion = req.max_tokens if req is not None and req.max_tokens is not None else 1
        if exc.prompt_tokens is not None:
            return overflow_error(exc.context_tokens or config.context_size, exc.prompt_tokens, completion)
        return ApiError(
            400,
            f"This model's maximum context length is {config.context_size} tokens. However, your request "
            f"does not fit ({exc}). Please reduce the length of the messages or completion.",
            code="context_length_exceeded",
            param="messages",
        )
    if isinstance(exc, Lfm2EdgeError):
        return api_error(exc)
    raise exc


def error_response(err: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 429 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


# Pages served from this machine, on any port, over http or https (as Ollama allows).
LOCAL_ORIGIN = re.compile(r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d{1,5})?", re.IGNORECASE)


def origin_matcher(allowed: Sequence[str]) -> Callable[[str], bool]:
    """Whether a browser ``Origin`` may call the API: a localhost one, one of ``allowed``
    (exact, without a trailing slash), or any when ``allowed`` holds "*"."""
    exact = {o.strip().rstrip("/").lower() for o in allowed}
    if "*" in exact:
        return lambda origin: True
    return lambda origin: bool(LOCAL_ORIGIN.fullmatch(origin)) or origin.lower() in exact


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class _BrowserGuard:
    """ASGI middleware: CORS for allowed origins (preflights answered here), 403 for a
    request from any other origin, and 415 for a POST that is not JSON, so that no page
    can start a generation with a request the browser sends without a preflight."""

    def __init__(self, app: Any, origins: Callable[[str], bool]) -> None:
        self.app, self.allowed = app, origins

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        method = scope["method"]
        cors: dict[str, str] = {}
        if origin is not None:
            if not self.allowed(origin):
                await self._refuse(
                    scope, receive, send,
                    ApiError(
                        403,
                        f"requests from the web origin {origin!r} are not allowed; start the server with "
                        "--allowed-origins to allow it",
                        type="permission_error",
                        code="origin_not_allowed",
                    ),
                    {"Vary": "Origin"},
                )
                return
            cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
            if method == "OPTIONS" and "access-control-request-method" in headers:
                preflight = {
                    **cors,
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": headers.get("access-control-request-headers")
                    or "Authorization, Content-Type",
                    "Access-Control-Max-Age": "600",
                }
                await Response(status_code=204, headers=preflight)(scope, receive, send)
                return
        if method == "POST" and not is_json_type(headers.get("content-type", "")):
            given = headers.get("content-type")
            await self._refuse(
                scope, receive, send,
                ApiError(
                    415,
                    "the request body must be JSON (Content-Type: application/json), "
                    + (f"not {given!r}" if given else "and this one declares no Content-Type"),
                    code="unsupported_media_type",
                ),
                cors,
            )
            return
        if not cors:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_raw_headers(cors)]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    async def _refuse(scope: Any, receive: Any, send: Any, err: ApiError, headers: dict[str, str]) -> None:
        response = error_response(err)
        response.headers.update(headers)
        await response(scope, receive, send)


def _raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class _KeyCheck:
    """ASGI middleware: ``/v1/*`` needs the API key."""

    def __init__(self, app: Any, config: ServerConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and not self._authorized(scope):
            response = error_response(
                ApiError(
                    401,
                    "a valid API key is required (Authorization: Bearer KEY)",
                    type="authentication_error",
                    code="invalid_api_key",
                )
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Any) -> bool:
        raw = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return _key_matches(raw, self.config.api_key or "")


def _key_matches(raw: bytes, api_key: str) -> bool:
    """``Bearer KEY`` as sent (bytes), the scheme in any case, the key in UTF-8 or Latin-1."""
    scheme, _, token = raw.strip().partition(b" ")
    keys = [api_key.encode("utf-8")]
    with contextlib.suppress(UnicodeEncodeError):
        keys.append(api_key.encode("latin-1"))
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token.strip(), key)
    return scheme.lower() == b"bearer" and ok


def _tool_deltas(hold: HoldBack, mode: str | None, result: ChatResult) -> tuple[str, list[dict[str, Any]]]:
    """The text still to send and the ``tool_calls`` deltas, once an answer is complete."""
    if not result.tool_calls:
        return hold.finish() + hold.rest, []
    deltas = [{"index": i, **c.to_openai()} for i, c in enumerate(result.tool_calls)]
    if mode == "forced":
        return "", deltas
    if mode == "required":  # held whole: the result's text is what is not a call
        return result.text, deltas
    return parse_answer(hold.rest).content, deltas


async def _sse(
    events: AsyncIterator[tuple[str, Any]],
    first: tuple[str, Any],
    req: ChatRequest,
    completion_id: str,
    config: ServerConfig,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    wants_logprobs = req.options.get("logprobs") is not None
    pending: list[Any] = []  # logprobs of tokens whose text is not sent yet

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        if wants_logprobs and delta is not None:
            extra["logprobs"] = list(pending)
            pending.clear()
        return sse(chunk_body(completion_id, req.model, created, delta, finish, **extra))

    try:
        yield chunk({"role": "assistant", "content": ""})
        mode = req.tool_mode
        # Text from a tool-call marker on becomes tool_calls, not content; a forced (or
        # required) call is held whole.
        hold = HoldBack(withhold=[TOOL_CALL_START] if mode else [], hold_all=mode in ("forced", "required"))
        event: tuple[str, Any] | None = first
        while event is not None:
            kind, value = event
            if kind == "logprobs":
                pending.extend(value)
            elif kind == "piece":
                if text := hold.feed(value)[0]:
                    yield chunk({"content": text})
            elif kind == "done":
                text, deltas = _tool_deltas(hold, mode, value)
                if text:
                    yield chunk({"content": text})
                if deltas:
                    yield chunk({"tool_calls": deltas})
                yield chunk({}, value.finish_reason)
                if req.include_usage:
                    yield chunk(None, usage=value.usage)
                break
            event = await events.__anext__()
        yield SSE_DONE
    except (ApiError, Lfm2EdgeError) as exc:
        yield sse(as_api_error(exc, req, config).body())
    finally:
        await events.aclose()  # type: ignore[attr-defined]
