"""A minimal OpenAI Responses API (``POST /v1/responses``) over the chat machinery.

Enough for the OpenAI Agents SDK with its default model class and for plain
``client.responses.create`` calls: ``input`` as a string or a list of items (messages
with ``input_text`` / ``output_text`` / ``input_image`` parts, ``function_call`` and
``function_call_output`` items), ``instructions``, function ``tools`` and
``tool_choice``, ``text.format`` (json_object / json_schema), ``max_output_tokens``,
the sampling fields, ``stream`` (the ``response.*`` events) and ``usage``. Nothing is
stored: ``previous_response_id`` and ``background`` are refused, ``store`` is ignored.

A request becomes a chat-completions body, checked by :func:`lfm2_edge.openai.parse_chat_request`;
the answer (a :class:`ChatResult`) becomes a ``response`` object.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lfm2_edge.chat.events import Done, Piece, Streamed
from lfm2_edge.chat.results import ChatResult
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.openai import ApiError, ChatRequest, RequestLimits, logprobs_body, parse_chat_request

__all__ = ["ResponsesRequest", "events", "parse_request", "response_body"]

_SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "parallel_tool_calls",
)


@dataclass
class ResponsesRequest(ChatRequest):
    """A checked Responses request: the chat request, and what the response echoes."""

    echo: dict[str, Any] = field(default_factory=dict)


def parse_request(body: Any, limits: RequestLimits) -> ResponsesRequest:
    """Check a Responses body; raise :class:`ApiError` naming the bad field."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise ApiError(
                400, f"'{name}' is not supported: this server stores no responses; send the whole input", param=name
            )
    if body.get("background"):
        raise ApiError(400, "background responses are not supported", param="background")
    chat: dict[str, Any] = {k: body[k] for k in _SAMPLING if body.get(k) is not None}
    if "model" in body:
        chat["model"] = body["model"]
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ApiError(400, "'instructions' must be a string", param="instructions")
    messages = [{"role": "system", "content": instructions}] if instructions else []
    messages += _messages(body.get("input"))
    chat["messages"] = messages
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if body.get("tools"):
        chat["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), Mapping) else None
    if isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema"):
        if fmt["type"] == "json_object":
            chat["response_format"] = {"type": "json_object"}
        else:
            schema = {k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    top = body.get("top_logprobs")
    if top:
        chat["logprobs"], chat["top_logprobs"] = True, top
    chat["stream"] = body.get("stream", False)
    try:
        req = parse_chat_request(chat, limits)
    except ApiError as err:
        err.param = _RENAMED.get((err.param or "").split("[")[0], err.param)
        raise
    echo = {
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "text": body.get("text") or {"format": {"type": "text"}},
        "truncation": body.get("truncation", "disabled"),
        "store": False,
    }
    return ResponsesRequest(req.messages, req.options, req.stream, False, req.model, req.max_tokens, echo=echo)


_RENAMED = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}


def _messages(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise ApiError(400, "'input' must be a string or a non-empty list of items", param="input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise ApiError(400, f"{param} must be an object", param="input")
        kind = item.get("type", "message")
        if kind == "message":
            out.append({"role": item.get("role"), "content": _content(item.get("content"), param)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item.get("id") or "",
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"},
            }
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            continue
        else:
            raise ApiError(
                400,
                f"{param} is of type {kind!r}; this server takes message, function_call and function_call_output items",
                param="input",
            )
    return out


def _content(content: Any, param: str) -> Any:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ApiError(400, f"{param}.content must be a string or a list of parts", param="input")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise ApiError(
                    400, f"{param}: input_image needs an 'image_url' (file_id is not supported)", param="input"
                )
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        else:
            raise ApiError(
                400, f"{param} has a content part of type {kind!r}; use input_text or input_image", param="input"
            )
    return parts


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise ApiError(400, "'tools' must be a list of function tools", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            raise ApiError(400, f"tools[{i}] is of type {kind!r}; this server runs function tools only", param="tools")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


# -- the answer -------------------------------------------------------------------------


def _usage(result: ChatResult) -> dict[str, Any]:
    u = result.usage
    return {
        "input_tokens": u.prompt_tokens,
        # cache_write_tokens: required since 2026-07; a prompt-cache write is not billed or counted here
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    }


def _message_item(item_id: str, text: str, logprobs: Any, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": [part]}


def _call_items(result: ChatResult) -> list[dict[str, Any]]:
    items = []
    for call in result.tool_calls:
        openai = call.to_openai()
        items.append(
            {
                "id": f"fc_{uuid.uuid4().hex}",
                "type": "function_call",
                "status": "completed",
                "call_id": openai["id"] or f"call_{uuid.uuid4().hex[:24]}",
                "name": openai["function"]["name"],
                "arguments": openai["function"]["arguments"],
            }
        )
    return items


def _text_logprobs(result: ChatResult | None) -> list[dict[str, Any]]:
    body = logprobs_body(getattr(result, "logprobs", None)) if result is not None else None
    return body["content"] if body else []


def _skeleton(req: ResponsesRequest, response_id: str, created: int, status: str) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": req.model,
        "output": [],
        "error": None,
        "incomplete_details": None,
        "usage": None,
        **req.echo,
    }


def response_body(
    result: ChatResult, req: ResponsesRequest, response_id: str, created: int, message_id: str | None = None
) -> dict[str, Any]:
    """The ``response`` object for a finished answer."""
    incomplete = result.finish_reason == "length"
    body = _skeleton(req, response_id, created, "incomplete" if incomplete else "completed")
    output: list[dict[str, Any]] = []
    if result.text or not result.tool_calls:
        output.append(
            _message_item(
                message_id or f"msg_{uuid.uuid4().hex}",
                result.text,
                _text_logprobs(result),
                "incomplete" if incomplete else "completed",
            )
        )
    output += _call_items(result)
    body["output"] = output
    body["usage"] = _usage(result)
    if incomplete:
        body["incomplete_details"] = {"reason": "max_output_tokens"}
    return body


async def events(
    source: AsyncIterator[Streamed],
    first: Streamed,
    req: ResponsesRequest,
    response_id: str,
    to_error: Callable[[Exception], ApiError],
) -> AsyncIterator[bytes]:
    """The ``response.*`` server-sent events of a streamed answer."""
    created = int(time.time())
    seq = 0
    message_id = f"msg_{uuid.uuid4().hex}"
    opened = False

    def event(kind: str, **data: Any) -> bytes:
        nonlocal seq
        seq += 1
        payload = {"type": kind, "sequence_number": seq - 1, **data}
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

    def open_message() -> list[bytes]:
        nonlocal opened
        opened = True
        item = {"id": message_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        return [
            event("response.output_item.added", output_index=0, item=item),
            event("response.content_part.added", part=part, **where),
        ]

    def text_delta(text: str) -> list[bytes]:
        out = [] if opened else open_message()
        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        return [*out, event("response.output_text.delta", delta=text, logprobs=[], **where)]

    try:
        yield event("response.created", response=_skeleton(req, response_id, created, "in_progress"))
        yield event("response.in_progress", response=_skeleton(req, response_id, created, "in_progress"))
        current = first
        while True:
            if isinstance(current, Piece):
                for chunk in text_delta(current.text):
                    yield chunk
            elif isinstance(current, Done):
                result: ChatResult = current.result
                final = response_body(result, req, response_id, created, message_id)
                index = 0
                if opened or not result.tool_calls:
                    if not opened:
                        for chunk in open_message():
                            yield chunk
                    item = final["output"][0]
                    part = item["content"][0]
                    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
                    yield event("response.output_text.done", text=part["text"], logprobs=part["logprobs"], **where)
                    yield event("response.content_part.done", part=part, **where)
                    yield event("response.output_item.done", output_index=0, item=item)
                    index = 1
                for offset, item in enumerate(final["output"][index:]):
                    where_i = {"output_index": index + offset}
                    yield event(
                        "response.output_item.added", item={**item, "arguments": "", "status": "in_progress"}, **where_i
                    )
                    yield event(
                        "response.function_call_arguments.delta", item_id=item["id"], delta=item["arguments"], **where_i
                    )
                    yield event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        name=item["name"],
                        arguments=item["arguments"],
                        **where_i,
                    )
                    yield event("response.output_item.done", item=item, **where_i)
                kind_done = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
                yield event(kind_done, response=final)
                break
            current = await source.__anext__()
    except (ApiError, Lfm2EdgeError) as exc:
        err = to_error(exc)
        yield event("error", code=err.code, message=err.message, param=err.param)
    finally:
        await source.aclose()  # type: ignore[attr-defined]
