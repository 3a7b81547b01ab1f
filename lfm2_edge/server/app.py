"""``lfm2-edge serve``: the OpenAI chat-completions API on the served models.

The same client code that talks to vLLM (``openai`` package, ``image_url`` parts,
``extra_body={"min_p": ..., "repetition_penalty": ...}``) talks to this server. Requests
share one llama.cpp context: each gets a sequence (``serve --slots N``), and every step
decodes one token for all of them in one batch (:mod:`lfm2_edge.local.engine`); requests
beyond the free slots wait in arrival order, and a full queue answers 429. Every
failure is an OpenAI-style error body with a 4xx status, and the server keeps serving.
A client that disconnects mid-stream stops its generation. Several models
(:mod:`lfm2_edge.server.pool`) are loaded on demand, unloaded when idle past their
keep-alive, and loaded or unloaded by hand with llama-server's ``POST /models/load`` and
``/models/unload``.

Browsers: pages from localhost origins (any port, http or https) may call the API, others
only when ``allowed_origins`` names them; a POST must be JSON (415 otherwise), so a page
cannot start a generation with a "simple" cross-origin request that skips the preflight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lfm2_edge.chat.events import Done, Logprobs, Piece, Reasoning, Streamed
from lfm2_edge.chat.images import load_image
from lfm2_edge.chat.video import video_frames
from lfm2_edge.errors import ContextOverflowError, ImageError, Lfm2EdgeError
from lfm2_edge.openai import (
    SSE_DONE,
    ApiError,
    ChatRequest,
    ChunkEvents,
    api_error,
    completion_body,
    overflow_error,
    parse_chat_request,
    parse_json_body,
    responses,
    sse,
)
from lfm2_edge.server import metrics, ollama_routes
from lfm2_edge.server.admission import Admission
from lfm2_edge.server.config import ServerConfig, Serving
from lfm2_edge.server.middleware import BrowserGuard, KeyCheck, RequestId, error_response, origin_matcher
from lfm2_edge.server.pool import Pool
from lfm2_edge.server.web import router as web_router

__all__ = ["create_app"]


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

    def load_video(video: dict[str, Any]) -> list[Any]:  # its sampled frames: images of the turn
        frames = video_frames(
            video["url"],
            fps=video["fps"],
            max_frames=video["max_frames"],
            allow_remote=config.allow_remote_images,
            allow_private=config.allow_private_image_urls,
            max_pixels=min(config.max_image_pixels, budget[0]),
            timeout=config.image_fetch_timeout_s,
        )
        budget[0] -= sum(f.width * f.height for f in frames)
        if budget[0] < 0:
            raise ImageError(f"the request's images and video frames are over {config.max_request_pixels:,} pixels")
        return frames

    for message in req.messages:
        content: list[dict[str, Any]] = []
        for part in message["content"]:
            if part.get("type") == "image_url":
                content.append({"type": "image", "image": await asyncio.to_thread(load, part["image_url"]["url"])})
            elif part.get("type") == "video_url":
                frames = await asyncio.to_thread(load_video, part["video_url"])
                content.extend({"type": "image", "image": frame} for frame in frames)
            else:
                content.append(part)
        message["content"] = content


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """Set ``cancel`` when the client goes away, while its request waits or runs."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.1)


def create_app(
    models: Sequence[Any] | Pool, config: ServerConfig, *, on_shutdown: Callable[[], None] | None = None
) -> FastAPI:
    """A FastAPI app serving ``models``: a :class:`Pool` of the models it may load, or
    the replicas of one loaded model (each batching as many requests as its context has
    sequences: ``n_seq_max``), kept until the server stops. ``on_shutdown`` runs after
    the pool has unloaded what it loaded."""

    pool = models if isinstance(models, Pool) else Pool.of_loaded(models, config.model_names)
    config = dataclasses.replace(config, model_names=pool.names)
    first = pool.served[0].models[:1]
    if config.context_size is None and first and isinstance(getattr(first[0], "n_ctx_per_seq", None), int):
        config = dataclasses.replace(config, context_size=first[0].n_ctx_per_seq)
    engine = Admission(pool, config.max_queue)

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        reaper = asyncio.create_task(pool.reap())
        yield
        reaper.cancel()
        engine.shutdown()
        await pool.close()
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
        error = ApiError(exc.status_code, message, code=_CODES.get(exc.status_code))
        response = error_response(error, request.url.path)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:  # the server keeps serving
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    if config.api_key is not None:
        # A plain ASGI wrapper, not @app.middleware: that one hides client disconnects from handlers.
        app.add_middleware(KeyCheck, config=config)
    # Added last, so it runs first: preflights never need the key, and errors carry CORS headers.
    app.add_middleware(BrowserGuard, origins=origin_matcher(config.allowed_origins))
    app.add_middleware(RequestId)  # outermost: every answer, refusals included, has x-request-id
    serving = Serving(engine, pool, config, _read_body, _load_images, _watch_disconnect, as_api_error)
    app.include_router(metrics.router(serving))  # /slots; /metrics with config.metrics (wraps engine first)
    app.include_router(ollama_routes.router(serving))  # Ollama's /api/*

    app.include_router(web_router(pool, config))  # GET / (the chat page), /camera, /web/*

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "queued": engine.queued,
            "served": engine.served,
            "cancelled": engine.cancelled,
            "slots": engine.slots,
            "models": [{"id": s.name, "status": pool.status(s)} for s in pool.served],
        }

    def model_card(name: str) -> dict[str, Any]:
        served = pool.find(name)
        return {"id": name, "object": "model", "created": created, "owned_by": "lfm2-edge",
                "status": pool.status(served)}  # fmt: skip

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in config.model_names]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> Any:
        try:
            pool.find(model_id)
        except ApiError as err:
            return error_response(err)
        return model_card(model_id)

    async def named_model(request: Request) -> Any:
        body = parse_json_body(await _read_body(request, config.max_body_bytes))
        name = body.get("model") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise ApiError(400, "the body must be a JSON object with the model's name: {\"model\": \"...\"}",
                           param="model")  # fmt: skip
        return pool.find(name)

    @app.post("/models/load")
    async def load_model(request: Request) -> Any:
        """llama-server's router: load a model now (its keep-alive starts at once)."""
        try:
            served = await named_model(request)
            await pool.acquire(served, pool.keep_alive)
        except ApiError as err:
            return error_response(err)
        pool.release(served)
        return {"success": True, "model": served.name, "status": pool.status(served)}

    @app.post("/models/unload")
    async def unload_model(request: Request) -> Any:
        """llama-server's router: unload a model now; a 409 while requests use it."""
        try:
            served = await named_model(request)
        except ApiError as err:
            return error_response(err)
        if served.active:
            return error_response(
                ApiError(
                    409,
                    f"model {served.name!r} is answering {served.active} request(s); retry when idle",
                    code="model_busy",
                    param="model",
                )
            )
        if served.loaded and served.load is None:
            return error_response(
                ApiError(409, f"model {served.name!r} was given loaded and cannot be unloaded", param="model")
            )
        await pool.unload(served)
        return {"success": True, "model": served.name, "status": pool.status(served)}

    async def start(
        request: Request, parse: Callable[[Any], ChatRequest]
    ) -> tuple[ChatRequest, AsyncIterator[Streamed], Streamed] | JSONResponse:
        """Admit, read, check and start a request: its first event (every event, when it
        does not stream), or the error answer; errors before the first token are plain 4xx."""
        try:
            ticket = engine.admit()  # before the body is read: a full queue costs nothing
        except ApiError as err:
            return error_response(err)
        watcher: asyncio.Task[None] | None = None
        events: AsyncIterator[Streamed] | None = None
        req: ChatRequest | None = None
        try:
            req = parse(parse_json_body(await _read_body(request, config.max_body_bytes)))
            watcher = asyncio.create_task(_watch_disconnect(request, ticket.cancel))
            await _load_images(req, config)
            events = engine.run(ticket, req)  # from here on the engine releases the ticket
            first = await events.__anext__()
            if not req.stream:
                while not isinstance(first, Done):
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
        assert isinstance(first, Done)
        return completion_body(first.result, completion_id, req.model, int(time.time()))

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
        assert isinstance(first, Done)
        return responses.response_body(first.result, req, response_id, int(time.time()))

    return app


_ROUTES = (
    "POST /v1/chat/completions, POST /v1/responses, GET /v1/models, GET /health, GET /slots, "
    "POST /models/load and /models/unload, "
    "Ollama's /api/chat, /api/generate, /api/tags, /api/show, /api/ps and /api/version, GET /metrics with --metrics, "
    "and the pages GET / (chat) and GET /camera"
)
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


async def _sse(
    events: AsyncIterator[Streamed],
    first: Streamed,
    req: ChatRequest,
    completion_id: str,
    config: ServerConfig,
) -> AsyncIterator[bytes]:
    """The chat-completions stream of an answer's events: a thinking answer's reasoning
    as ``reasoning_content`` deltas, its pieces as content deltas (each after the
    logprobs of its tokens, when asked for), then the tool calls the done event carries,
    the finish reason and the usage."""
    wants_logprobs = req.options.get("logprobs") is not None
    pending: list[Any] = []  # logprobs of tokens whose text is not sent yet

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        if wants_logprobs and delta is not None:
            extra["logprobs"] = list(pending)
            pending.clear()
        return out.event(delta, finish, **extra)

    try:
        out = ChunkEvents(completion_id, req.model, int(time.time()))
        yield chunk({"role": "assistant", "content": ""})
        event = first
        while True:
            if isinstance(event, Logprobs):
                pending.extend(event.entries)
            elif isinstance(event, Piece):
                yield chunk({"content": event.text}) if wants_logprobs else out.content(event.text)
            elif isinstance(event, Reasoning):
                yield chunk({"reasoning_content": event.text})
            else:
                result = event.result
                if result.tool_calls:
                    yield chunk(
                        {"tool_calls": [{"index": i, **c.to_openai()} for i, c in enumerate(result.tool_calls)]}
                    )
                yield chunk({}, result.finish_reason)
                if req.include_usage:
                    yield chunk(None, usage=result.usage, timings=result.timings)
                break
            event = await events.__anext__()
        yield SSE_DONE
    except (ApiError, Lfm2EdgeError) as exc:
        yield sse(as_api_error(exc, req, config).body())
    finally:
        await events.aclose()  # type: ignore[attr-defined]
