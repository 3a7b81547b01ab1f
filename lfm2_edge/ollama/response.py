"""Ollama answers: the NDJSON chunks of ``/api/chat`` and ``/api/generate``, their final
chunk with Ollama's figures (durations in nanoseconds, token counts), tool calls in
Ollama's shape (arguments an object), errors as ``{"error": "..."}``.

The figures: ``prompt_eval_count`` is the prompt's positions (image tokens included,
cached ones too, as the OpenAI usage counts them), ``prompt_eval_duration`` the time
spent reading it, ``eval_count`` the tokens generated and ``eval_duration`` the time
from the end of the prompt to the last token; ``load_duration`` is 0 (``serve`` loads
the model before it accepts requests) and ``total_duration`` the request's wall-clock time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from lfm2_edge.chat.results import ChatResult

__all__ = ["chat_chunk", "error_body", "final_fields", "generate_chunk", "line", "now", "tool_calls"]


def now() -> str:
    """An RFC 3339 time in UTC, as Ollama writes ``created_at``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line(data: Mapping[str, Any]) -> bytes:
    """One NDJSON line."""
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"


def error_body(message: str) -> dict[str, Any]:
    return {"error": message}


def tool_calls(result: ChatResult) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "function": {"index": i, "name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(result.tool_calls)
    ]


def final_fields(result: ChatResult | None, total_ns: int) -> dict[str, Any]:
    """The last chunk's ``done`` fields; ``result`` None for a request that only loaded the model."""
    if result is None:
        return {"done_reason": "load", "done": True}
    t, u = result.timings, result.usage
    prompt_ns = int(t.prompt_ms * 1e6)
    first_ns = int(max(0.0, t.first_token_ms - t.queue_ms - t.prompt_ms) * 1e6)
    return {
        "done_reason": "length" if result.finish_reason == "length" else "stop",
        "done": True,
        "total_duration": total_ns,
        "load_duration": int(t.load_ms * 1e6),
        "prompt_eval_count": u.prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": u.completion_tokens,
        "eval_duration": first_ns + int(t.decode_ms * 1e6),
    }


def chat_chunk(model: str, content: str, **extra: Any) -> dict[str, Any]:
    """An ``/api/chat`` chunk (or whole answer): ``extra`` holds ``thinking`` (a thinking
    model's reasoning, into the message, as Ollama's), ``tool_calls`` (into the message)
    and the final fields."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    thinking = extra.pop("thinking", None)
    if thinking:
        message["thinking"] = thinking
    if extra.get("tool_calls"):
        message["tool_calls"] = extra.pop("tool_calls")
    extra.pop("tool_calls", None)
    return {"model": model, "created_at": now(), "message": message, "done": False, **extra}


def generate_chunk(model: str, response: str, **extra: Any) -> dict[str, Any]:
    """An ``/api/generate`` chunk: ``extra`` holds ``thinking`` (beside ``response``, as
    Ollama's) and the final fields."""
    if not extra.get("thinking"):
        extra.pop("thinking", None)
    return {"model": model, "created_at": now(), "response": response, "done": False, **extra}
