"""Chat-completions responses: the completion and chunk bodies (message, usage,
logprobs), SSE framing (:func:`sse`, :data:`SSE_DONE`, :class:`ChunkEvents`), and
:class:`StreamReader`, which turns the chunks back into a :class:`ChatResult`.

A thinking model's reasoning is ``reasoning_content``, beside ``content``: in the
message of a whole answer, in the deltas of a stream (all before the first content
delta), as vLLM's reasoning parsers and llama-server send it. The reader also takes
vLLM's newer name, ``reasoning``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lfm2_edge.chat.results import ChatResult, FinishReason, Thought, Timings, TokenLogprob, ToolCall, Usage
from lfm2_edge.errors import RemoteError

__all__ = [
    "SSE_DONE",
    "ChunkEvents",
    "StreamReader",
    "chunk_body",
    "completion_body",
    "logprobs_body",
    "message_body",
    "sse",
    "timings_body",
    "usage_body",
]


def message_body(result: ChatResult) -> dict[str, Any]:
    # refusal: required (nullable) in OpenAI's ChatCompletionResponseMessage; this model never refuses by API
    message: dict[str, Any] = {"role": "assistant", "content": result.text, "refusal": None}
    reasoning = getattr(result, "reasoning", None)
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    if result.tool_calls:
        message["content"] = result.text or None
        message["tool_calls"] = [c.to_openai() for c in result.tool_calls]
    return message


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def timings_body(usage: Usage, timings: Timings) -> dict[str, Any]:
    """lfm2-edge's figures of one answer (not OpenAI's; llama-server sends a ``timings``
    object too): milliseconds, token rates, image tokens and the image tiles encoded (0
    when the encoder's cache or a saved state served the image). What ``-v`` prints."""
    return {
        "queue_ms": round(timings.queue_ms, 2),
        "load_ms": round(timings.load_ms, 2),
        "prompt_ms": round(timings.prompt_ms, 2),
        "image_ms": round(timings.image_ms, 2),
        "first_token_ms": round(timings.first_token_ms, 2),
        "decode_ms": round(timings.decode_ms, 2),
        "prompt_tok_s": round(timings.prompt_tok_s(usage), 2),
        "decode_tok_s": round(timings.decode_tok_s(usage), 2),
        "image_tokens": usage.image_tokens,
        "image_encodes": usage.image_encodes,
    }


def _token_bytes(token: str, raw: Any) -> list[int]:
    return [int(b) for b in raw] if raw is not None else list(token.encode("utf-8"))


def logprobs_body(entries: Sequence[Any] | None) -> dict[str, Any] | None:
    """OpenAI's ``logprobs`` object (``{"content": [...]}``) for a result's or a stream
    piece's ``TokenLogprob`` entries (token, logprob, bytes, top_logprobs as (token,
    logprob) pairs); None when logprobs were not asked for."""
    if entries is None:
        return None
    content = []
    for entry in entries:
        token = str(getattr(entry, "token", ""))
        alts = getattr(entry, "top_logprobs", ()) or ()
        raw = getattr(entry, "top_bytes", ()) or ()
        content.append(
            {
                "token": token,
                "logprob": float(getattr(entry, "logprob", 0.0)),
                "bytes": _token_bytes(token, getattr(entry, "bytes", None)),
                "top_logprobs": [
                    {
                        "token": str(alt),
                        "logprob": float(lp),
                        "bytes": _token_bytes(str(alt), raw[i] if i < len(raw) else None),
                    }
                    for i, (alt, lp) in enumerate(alts)
                ],
            }
        )
    return {"content": content, "refusal": None}


def completion_body(result: ChatResult, completion_id: str, model: str, created: int) -> dict[str, Any]:
    choice = {
        "index": 0,
        "message": message_body(result),
        "logprobs": logprobs_body(getattr(result, "logprobs", None)),
        "finish_reason": result.finish_reason,
    }
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage_body(result.usage),
    }
    timings = getattr(result, "timings", None)
    if isinstance(timings, Timings):
        body["timings"] = timings_body(result.usage, timings)
    return body


def chunk_body(
    completion_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    usage: Usage | None = None,
    logprobs: Sequence[Any] | None = None,
    timings: Timings | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``: one delta (with the ``TokenLogprob`` entries of its
    tokens, when logprobs were asked for), or (``delta=None``) the usage chunk, with the
    answer's :func:`timings_body` when ``timings`` is given."""
    data: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = logprobs_body(logprobs)
    data["choices"] = [] if delta is None else [choice]
    if usage is not None:
        data["usage"] = usage_body(usage)
        if timings is not None:
            data["timings"] = timings_body(usage, timings)
    return data


def sse(data: Mapping[str, Any]) -> bytes:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


class ChunkEvents:
    """The SSE events of one streamed chat completion. A text delta's event (one per
    token) is the same bytes as ``sse(chunk_body(..., {"content": text}))``, but built
    from a head and a tail made once, around the JSON of the text alone."""

    _MARK = "\uffff lfm2-edge content \uffff"

    def __init__(self, completion_id: str, model: str, created: int) -> None:
        self.completion_id, self.model, self.created = completion_id, model, created
        whole = self.event({"content": self._MARK})
        mark = json.dumps(self._MARK, ensure_ascii=False).encode()
        at = whole.rindex(mark)  # the content comes after the id and the model name
        self._head, self._tail = whole[:at], whole[at + len(mark) :]

    def content(self, text: str) -> bytes:
        return self._head + json.dumps(text, ensure_ascii=False).encode() + self._tail

    def event(self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        return sse(chunk_body(self.completion_id, self.model, self.created, delta, finish, **extra))


class StreamReader:
    """Reads a chat-completions SSE stream back into text pieces and a :class:`ChatResult`."""

    def __init__(self, base_url: str, logprobs: list[TokenLogprob] | None = None) -> None:
        self.base_url = base_url
        self.logprobs = logprobs  # filled from the chunks' logprobs, when asked for
        self.text: list[str] = []
        self.finish: FinishReason = "stop"
        self.usage: dict[str, Any] = {}
        self.calls: dict[int, dict[str, str]] = {}
        self.reasoning: list[str] | None = None  # the reasoning deltas, once one came
        self.done = False

    def feed_line(self, line: str) -> str | None:
        """One line of the stream; returns the content it carries, if any, else its
        reasoning as a :class:`Thought`."""
        if not line.startswith("data:"):
            return None
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return None
        chunk = json.loads(data)
        if "error" in chunk:
            error = chunk["error"]
            raise RemoteError(f"{self.base_url}: {error.get('message', error) if isinstance(error, dict) else error}")
        self.usage = chunk.get("usage") or self.usage
        out, thought = [], []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            for call in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(int(call.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                fn = call.get("function") or {}
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if self.logprobs is not None:
                self.logprobs.extend(_entries(choice.get("logprobs")))
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                thought.append(reasoning)
            if delta.get("content"):
                out.append(delta["content"])
            if choice.get("finish_reason") in ("stop", "length", "tool_calls"):
                self.finish = choice["finish_reason"]
        if thought:
            self.reasoning = [*(self.reasoning or ()), *thought]
        piece = "".join(out)
        if piece:
            self.text.append(piece)
        return piece or (Thought("".join(thought)) if thought else None)

    def result(self, timings: Timings) -> ChatResult:
        details = self.usage.get("prompt_tokens_details") or {}
        calls = tuple(
            ToolCall(c["name"], _json_object(c["arguments"]), id=c["id"]) for _, c in sorted(self.calls.items())
        )
        return ChatResult(
            text="".join(self.text),
            finish_reason=self.finish,
            tool_calls=calls,
            usage=Usage(
                int(self.usage.get("prompt_tokens", 0)),
                0,  # the OpenAI usage has no image-token count
                int(self.usage.get("completion_tokens", len(self.text))),
                cached_tokens=int(details.get("cached_tokens") or 0),
            ),
            timings=timings,
            logprobs=tuple(self.logprobs) if self.logprobs is not None else None,
            reasoning="".join(self.reasoning) if self.reasoning is not None else None,
        )


def _entries(body: Any) -> list[TokenLogprob]:
    """:class:`TokenLogprob` entries of a chunk's ``logprobs`` object."""
    if not isinstance(body, Mapping):
        return []
    out = []
    for item in body.get("content") or []:
        token = str(item.get("token", ""))
        data = item.get("bytes")
        tops = item.get("top_logprobs") or []
        alts = tuple((str(a.get("token", "")), float(a.get("logprob", 0.0))) for a in tops)
        raw = tuple(tuple(a["bytes"]) if isinstance(a.get("bytes"), list) else () for a in tops)
        out.append(
            TokenLogprob(
                token,
                float(item.get("logprob", 0.0)),
                tuple(data) if isinstance(data, list) else tuple(token.encode("utf-8")),
                alts,
                raw if all(raw) else (),
            )
        )
    return out


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}
