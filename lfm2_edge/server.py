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
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

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
            return model.chat(request.messages, **request.options)
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
                stream = model.chat(request.messages, stream=True, **request.options)
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
            req = parse_chat_request(body, config)
        except ApiError as err:
            return error_response(err)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if not req.stream:
            try:
                result = await engine.complete(req)
            except ApiError as err:
                return error_response(err)
            except Lfm2EdgeError as exc:
                return error_response(api_error(exc))
            return completion_body(result, completion_id, req.model, int(time.time()))
        try:
            events = engine.stream(req)
            first = await events.__anext__()  # errors before the first token are plain 4xx answers
        except ApiError as err:
            return error_response(err)
        except Lfm2EdgeError as exc:
            return error_response(api_error(exc))
        return StreamingResponse(_sse(events, first, req, completion_id), media_type="text/event-stream")

    return app




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
    except Lfm2EdgeError as exc:
        yield sse(api_error(exc).body())
    finally:
        await events.aclose()  # type: ignore[attr-defined]
