"""Ollama's native API on ``serve``'s port: ``POST /api/chat``, ``POST /api/generate``
(NDJSON streams unless ``"stream": false``), ``GET /api/tags``, ``POST /api/show``,
``GET /api/ps`` and ``GET /api/version``, for the apps that speak it (Home Assistant's
Ollama integration, LLM Vision, Open WebUI, the ``ollama`` client libraries).

A request goes through the same admission, limits and engine as an OpenAI one
(:class:`lfm2_edge.server.admission.Admission`); :mod:`lfm2_edge.ollama` translates
both ways. Errors are Ollama's ``{"error": "..."}`` with its status codes (400 a bad
request, 404 an unknown model, 503 a full queue).

``keep_alive`` (a duration such as ``"5m"``, seconds, or -1 for ever) is how long the
model stays loaded once the request is done, as in Ollama, in place of ``serve
--keep-alive`` (:mod:`lfm2_edge.server.pool`); a request with nothing to answer loads
the model (``done_reason`` "load"), or with ``keep_alive`` 0 unloads it ("unload").
``/api/tags`` lists every served model, ``/api/ps`` the loaded ones and when each
unloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from gguf import LlamaFileType

from lfm2_edge import __version__
from lfm2_edge.chat.events import Done, Piece, Reasoning, Streamed
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.hub.gguf import read_summary
from lfm2_edge.ollama import (
    OllamaRequest,
    chat_chunk,
    error_body,
    final_fields,
    generate_chunk,
    line,
    parse_chat,
    parse_generate,
    resolve_model,
    tool_calls,
)
from lfm2_edge.openai import ApiError, parse_json_body
from lfm2_edge.server.config import Serving
from lfm2_edge.server.pool import Served, parse_duration

__all__ = ["OLLAMA_API_VERSION", "router"]

# The Ollama API level these routes follow (clients read /api/version to pick features).
OLLAMA_API_VERSION = "0.12.0"
_FOREVER = "2318-11-29T00:00:00Z"  # Ollama's expires_at for a model kept loaded (keep_alive -1)
NDJSON = "application/x-ndjson"


def _error(err: ApiError) -> JSONResponse:
    if err.status == 429:  # Ollama's answer to a full queue (OLLAMA_MAX_QUEUE)
        return JSONResponse(
            error_body("server busy, please try again. maximum pending requests exceeded"),
            status_code=503,
            headers={"Retry-After": "1"},
        )
    return JSONResponse(error_body(err.message), status_code=err.status)


def _keep_alive(value: Any) -> float | None:
    """A request's ``keep_alive`` in seconds (:data:`FOREVER` for -1); a 400 for what is
    not a duration."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ApiError(400, f"keep_alive must be {exc}") from None


def _expires(served: Served) -> str:
    """When ``served`` unloads, as Ollama's /api/ps says it: idle, when its keep-alive
    runs out; in use, its keep-alive after now."""
    at = served.expires
    if at is None and served.active and served.keep is not None:  # None: FOREVER
        at = time.time() + served.keep
    if at is None:
        return _FOREVER
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _facts(served: Served) -> dict[str, Any]:
    """What /api/tags, /api/show and /api/ps say of a served model, from its files."""
    path = Path(served.model_path)
    mmproj = served.mmproj_path
    summary = read_summary(path)
    n_params = sum(math.prod(t.shape) for t in summary.tensors.values())
    size = path.stat().st_size + (Path(mmproj).stat().st_size if mmproj else 0)
    stat = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    try:
        quant = LlamaFileType(int(summary.get("general.file_type"))).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        quant = "unknown"
    arch = summary.architecture
    scale = next(((n, s) for n, s in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")) if n_params >= n), (1, ""))
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch, "clip"] if mmproj else [arch],
        "parameter_size": f"{n_params / scale[0]:.3g}{scale[1]}",
        "quantization_level": quant,
    }
    modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    info = {
        "general.architecture": arch,
        "general.name": summary.get("general.name"),
        "general.parameter_count": n_params,
        f"{arch}.context_length": summary.get(f"{arch}.context_length"),
        f"{arch}.embedding_length": summary.get(f"{arch}.embedding_length"),
        f"{arch}.block_count": summary.get(f"{arch}.block_count"),
    }
    template = summary.get("tokenizer.chat_template") or ""
    return {"size": size, "digest": digest, "details": details, "modified_at": modified, "model_info": info,
            "template": template, "context_length": summary.get(f"{arch}.context_length")}  # fmt: skip


def router(serving: Serving) -> APIRouter:
    """The Ollama routes for ``create_app``'s models."""
    api = APIRouter()
    config, admission, pool = serving.config, serving.admission, serving.pool
    known: dict[int, dict[str, Any]] = {}  # each served model's facts, read once

    def facts(served: Served) -> dict[str, Any]:
        if id(served) not in known:
            known[id(served)] = _facts(served)
        return known[id(served)]

    def entry(served: Served, **extra: Any) -> dict[str, Any]:
        listed = served.name if ":" in served.name else f"{served.name}:latest"
        f = facts(served)
        return {"name": listed, "model": listed, "size": f["size"], "digest": f["digest"], "details": f["details"],
                **extra}  # fmt: skip

    async def load_or_unload(req: OllamaRequest, keep: float | None) -> str:
        """A request with nothing to answer: load the model, or unload it (keep_alive 0;
        a model answering others unloads when they are done)."""
        served = pool.find(resolve_model(req.model, config))
        if keep == 0 and served.load is not None:
            await pool.unload_when_idle(served)
            return "unload"
        await pool.acquire(served, keep)
        pool.release(served)
        return "load"

    async def answer(
        request: Request,
        parse: Callable[[Any], OllamaRequest],
        chunk: Callable[..., dict[str, Any]],
    ) -> Response:
        started = time.perf_counter_ns()
        try:
            ticket = admission.admit()  # before the body is read: a full queue costs nothing
        except ApiError as err:
            return _error(err)
        watcher: asyncio.Task[None] | None = None
        events: AsyncIterator[Streamed] | None = None
        req: OllamaRequest | None = None
        try:
            req = parse(parse_json_body(await serving.read_body(request, config.max_body_bytes)))
            if req.keep_alive is not None:
                ticket.keep_alive = _keep_alive(req.keep_alive)
            if req.chat is None:  # loads the model, or unloads it
                done = await load_or_unload(req, ticket.keep_alive)
                ticket.outcome = "served"
                return JSONResponse(chunk(req.model, "", **{**final_fields(None, 0), "done_reason": done}))
            watcher = asyncio.create_task(serving.watch_disconnect(request, ticket.cancel))
            await serving.load_images(req.chat, config)
            events = admission.run(ticket, req.chat)  # from here on the engine releases the ticket
            first = await events.__anext__()
            if not req.stream:
                while not isinstance(first, Done):
                    first = await events.__anext__()
        except (ApiError, Lfm2EdgeError) as exc:
            return _error(serving.as_api_error(exc, req.chat if req else None, config))
        finally:
            if events is None:
                ticket.release()
            if watcher is not None:
                watcher.cancel()
        if not req.stream:
            await events.aclose()  # type: ignore[attr-defined]
            assert isinstance(first, Done)
            result = first.result
            fields = final_fields(result, time.perf_counter_ns() - started)
            thinking = result.reasoning if req.think is not False else None
            return JSONResponse(
                chunk(req.model, result.text, thinking=thinking, tool_calls=tool_calls(result), **fields)
            )
        return StreamingResponse(_ndjson(events, first, req, chunk, started, serving), media_type=NDJSON)

    @api.post("/api/chat")
    async def chat(request: Request) -> Response:
        return await answer(request, lambda body: parse_chat(body, config), chat_chunk)

    @api.post("/api/generate")
    async def generate(request: Request) -> Response:
        return await answer(request, lambda body: parse_generate(body, config), _generate_chunk)

    @api.get("/api/tags")
    async def tags() -> dict[str, Any]:
        return {"models": [entry(s, modified_at=facts(s)["modified_at"]) for s in pool.served]}

    @api.post("/api/show")
    async def show(request: Request) -> Response:
        try:
            body = parse_json_body(await serving.read_body(request, config.max_body_bytes))
            if not isinstance(body, dict):
                raise ApiError(400, "the request body must be a JSON object")
            name = body.get("model") or body.get("name")
            served = pool.find(resolve_model(name, config))
        except ApiError as err:
            return _error(err)
        f = facts(served)
        model = served.models[0] if served.models else None  # its template and figures as loaded
        template = getattr(getattr(model, "chat_template", None), "source", None) or f["template"]
        sampling = getattr(model, "sampling", None) or served.sampling
        num_ctx = getattr(model, "n_ctx_per_seq", None) or served.n_ctx_per_seq
        parameters = "\n".join(
            f"{k:<18} {v}"
            for k, v in (
                ("temperature", getattr(sampling, "temperature", None)),
                ("min_p", getattr(sampling, "min_p", None)),
                ("repeat_penalty", getattr(sampling, "repetition_penalty", None)),
                ("num_ctx", num_ctx),
            )
            if v is not None
        )
        info = {**f["model_info"], f"{f['details']['family']}.context_length": num_ctx or f["context_length"]}
        capabilities = ["completion", "tools"] + (["vision"] if served.mmproj_path else [])
        return JSONResponse(
            {
                "license": "",
                "modelfile": f"# served by lfm2-edge {__version__}\nFROM {served.model_path}\n",
                "parameters": parameters,
                "template": template,
                "details": f["details"],
                "model_info": info,
                "capabilities": capabilities,
                "modified_at": f["modified_at"],
            }
        )

    @api.get("/api/ps")
    async def ps() -> dict[str, Any]:
        listed = []
        for served in pool.served:
            if not served.loaded:
                continue
            gpu = any(getattr(m, "device", "CPU") != "CPU" for m in served.models)
            size = facts(served)["size"]
            listed.append(
                entry(
                    served,
                    expires_at=_expires(served),
                    size_vram=size if gpu else 0,
                    context_length=served.models[0].n_ctx_per_seq,
                )
            )
        return {"models": listed}

    @api.get("/api/version")
    async def version() -> dict[str, str]:
        return {"version": OLLAMA_API_VERSION}

    return api


def _generate_chunk(model: str, text: str, **extra: Any) -> dict[str, Any]:
    extra.pop("tool_calls", None)  # /api/generate takes no tools
    return generate_chunk(model, text, **extra)


async def _ndjson(
    events: AsyncIterator[Streamed],
    first: Streamed,
    req: OllamaRequest,
    chunk: Callable[..., dict[str, Any]],
    started: int,
    serving: Serving,
) -> AsyncIterator[bytes]:
    """The NDJSON stream of an answer: a chunk per thought (``thinking``, unless
    ``think`` is false) and per piece, a chunk with the tool calls (as Ollama sends
    them), then the final chunk with the figures."""
    try:
        event = first
        while True:
            if isinstance(event, Piece):
                yield line(chunk(req.model, event.text))
            elif isinstance(event, Reasoning):
                if req.think is not False:
                    yield line(chunk(req.model, "", thinking=event.text))
            elif isinstance(event, Done):
                result = event.result
                if result.tool_calls:
                    yield line(chunk(req.model, "", tool_calls=tool_calls(result)))
                yield line(chunk(req.model, "", **final_fields(result, time.perf_counter_ns() - started)))
                break
            event = await events.__anext__()
    except (ApiError, Lfm2EdgeError) as exc:
        yield line(error_body(serving.as_api_error(exc, req.chat, serving.config).message))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
