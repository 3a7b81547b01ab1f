"""``lfm2-edge serve``: the OpenAI chat-completions API on one loaded model.

The same client code that talks to vLLM (``openai`` package, ``image_url`` parts,
``extra_body={"min_p": ..., "repetition_penalty": ...}``) talks to this server. Requests
share one llama.cpp context: each gets a sequence (``serve --slots N``), and every step
decodes one token for all of them in one batch (:mod:`lfm2_edge.batching`); requests
beyond the free slots wait in arrival order, and a full queue answers 429. Every
failure is an OpenAI-style error body with a 4xx status, and the server keeps serving.
A client that disconnects mid-stream stops its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lfm2_edge.errors import Lfm2EdgeError
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
    """

    api_key: str | None = None
    max_queue: int = 64  # requests waiting or running; more get 429
    max_body_bytes: int = 32 * 1024 * 1024
    allow_private_image_urls: bool = False
    max_image_pixels: int = 16_000_000  # per image, read from its header before decoding
    max_request_pixels: int = 32_000_000  # all of a request's images together
    image_fetch_timeout_s: float = 20.0  # a remote image URL, fetched whole, redirects included


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
        from lfm2_edge.batching import Job, prepare_chat

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
            chat = await asyncio.to_thread(prepare_chat, scheduler.model, request.messages, **request.options)
        except BaseException:
            ticket.release()
            raise
        scheduler.submit(Job(chat, emit, cancel))
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
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes and methods get an OpenAI-shaped body too, not FastAPI's {"detail": ...}.
        message = {404: "no such endpoint", 405: "method not allowed on this endpoint"}.get(exc.status_code, exc.detail)
        return error_response(ApiError(exc.status_code, str(message), code=_CODES.get(exc.status_code)))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:  # the server keeps serving
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}", type="server_error"))

    if config.api_key is not None:
        # A plain ASGI wrapper, not @app.middleware: that one hides client disconnects from handlers.
        app.add_middleware(_KeyCheck, config=config)

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

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            ticket = engine.admit()  # before the body is read: a full queue costs nothing
        except ApiError as err:
            return error_response(err)
        watcher: asyncio.Task[None] | None = None
        events: AsyncIterator[tuple[str, Any]] | None = None
        try:
            req = parse_chat_request(parse_json_body(await _read_body(request, config.max_body_bytes)), config)
            watcher = asyncio.create_task(_watch_disconnect(request, ticket.cancel))
            await _load_images(req, config)
            events = engine.run(ticket, req)  # from here on the engine releases the ticket
            first = await events.__anext__()  # errors before the first token are plain 4xx answers
            if not req.stream:
                while first[0] != "done":
                    first = await events.__anext__()
        except (ApiError, Lfm2EdgeError) as exc:
            return error_response(exc if isinstance(exc, ApiError) else api_error(exc))
        finally:
            if events is None:  # failed (or the client left) before reaching the engine
                ticket.release()
            if watcher is not None:
                watcher.cancel()  # a streaming response notices a disconnect itself
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            return StreamingResponse(_sse(events, first, req, completion_id), media_type="text/event-stream")
        await events.aclose()  # type: ignore[attr-defined]
        return completion_body(first[1], completion_id, req.model, int(time.time()))

    return app


_CODES = {404: "not_found", 405: "method_not_allowed"}


def error_response(err: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 429 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


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
    return parse_answer(hold.rest).content, deltas


async def _sse(
    events: AsyncIterator[tuple[str, Any]], first: tuple[str, Any], req: ChatRequest, completion_id: str
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        return sse(chunk_body(completion_id, req.model, created, delta, finish, **extra))

    try:
        yield chunk({"role": "assistant", "content": ""})
        mode = req.tool_mode
        # Text from a tool-call marker on becomes tool_calls, not content; a forced call is all call.
        hold = HoldBack(withhold=[TOOL_CALL_START] if mode else [], hold_all=mode == "forced")
        event: tuple[str, Any] | None = first
        while event is not None:
            kind, value = event
            if kind == "piece":
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
        yield sse((exc if isinstance(exc, ApiError) else api_error(exc)).body())
    finally:
        await events.aclose()  # type: ignore[attr-defined]
