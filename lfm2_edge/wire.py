"""The OpenAI chat-completions wire format, in both directions.

``lfm2-edge serve`` reads requests and writes responses with it; :class:`RemoteModel`
writes requests and reads responses with it. One module, so the two sides cannot drift:

* errors: :class:`ApiError` and the one table that maps lfm2-edge's typed errors to
  OpenAI ``code`` values and back (:func:`api_error`, :func:`error_from_response`);
* requests: :func:`parse_chat_request` (server) and :func:`request_body` (client),
  with :func:`image_url_of` reading an ``image_url`` part for both;
* responses: :func:`completion_body`, :func:`chunk_body`, :func:`usage_body`, SSE
  framing (:func:`sse`, :data:`SSE_DONE`), and :class:`StreamReader`, which turns the
  chunks back into a :class:`ChatResult`.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lfm2_edge.errors import ContextOverflowError, ImageError, Lfm2EdgeError, RemoteError
from lfm2_edge.images import LoadedImage
from lfm2_edge.results import ChatResult, FinishReason, Timings, Usage
from lfm2_edge.sampling import Sampling

__all__ = [
    "SSE_DONE",
    "ApiError",
    "ChatRequest",
    "StreamReader",
    "api_error",
    "chunk_body",
    "completion_body",
    "data_uri",
    "error_from_response",
    "image_url_of",
    "logprobs_body",
    "overflow_error",
    "parse_chat_request",
    "request_body",
    "sse",
    "usage_body",
]

ROLES = ("system", "user", "assistant", "tool")
# Sampling fields a request may carry (OpenAI's, plus vLLM's extra_body ones), with the
# ranges OpenAI (and vLLM, for its own fields) accept.
_FLOAT_FIELDS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "repetition_penalty": (0.01, 10.0),
}
_INT_FIELDS = {
    "top_k": (-1, 1 << 20),  # -1 (vLLM) and 0 both mean off
    "seed": (-(1 << 63), (1 << 64) - 1),
    "max_tokens": (1, 1 << 31),
    "max_completion_tokens": (1, 1 << 31),
}
TOP_LOGPROBS_RANGE = (0, 20)
# Fields OpenAI defines that are passed to ``model.chat`` only when set to something
# other than their neutral value, so a model without them keeps answering plain requests.
_PENALTIES = {"presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0)}
LOGIT_BIAS_RANGE = (-100.0, 100.0)
MAX_JSON_DEPTH = 64


# -- errors ------------------------------------------------------------------------------

# The one table between lfm2-edge's typed errors and OpenAI error codes (both directions).
ERROR_CODES: tuple[tuple[type[Lfm2EdgeError], str], ...] = (
    (ContextOverflowError, "context_length_exceeded"),
    (ImageError, "invalid_image"),
)


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


# The request field a model-layer error message is about, by how the message starts
# (tools.py words them after the field); anything else is about the messages.
_PARAMS_BY_MESSAGE = (
    ("tools[", "tools"),
    ("tool_choice", "tool_choice"),
    ("a named tool_choice", "tool_choice"),
    ("response_format", "response_format"),
    ("give response_format", "response_format"),
    ("the JSON schema", "response_format"),
)


def api_error(exc: Lfm2EdgeError, param: str | None = None) -> ApiError:
    """The 400 answer for a typed error raised while answering a request; ``param``
    (default: the field the message names, else "messages")."""
    code = next((c for cls, c in ERROR_CODES if isinstance(exc, cls)), None)
    message = str(exc)
    if param is None:
        param = next((p for prefix, p in _PARAMS_BY_MESSAGE if message.startswith(prefix)), "messages")
    return ApiError(400, message, code=code, param=param)


def error_from_response(base_url: str, status: int, content: bytes) -> Lfm2EdgeError:
    """The typed error for a server's error answer (the reverse of :func:`api_error`)."""
    try:
        error = json.loads(content).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message, code = content[:200].decode("utf-8", "replace"), None
    text = f"{base_url} answered {status}: {message}"
    cls = next((cls for cls, c in ERROR_CODES if c == code), RemoteError)
    return cls(text)


# -- requests --------------------------------------------------------------------------


def image_url_of(part: Mapping[str, Any]) -> Any:
    """The URL of an ``image_url`` part (``{"url": ...}`` or a bare string), or None."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, Mapping) else ref
    return url if isinstance(url, str) and url else None


@dataclass
class ChatRequest:
    """A checked chat-completions request, ready for ``model.chat``."""

    messages: list[dict[str, Any]]
    options: dict[str, Any]  # sampling fields, and tools / tool_choice / response_format
    stream: bool
    include_usage: bool
    model: str

    max_tokens: int | None = None  # as the request asked for it (None: not given)

    @property
    def tool_mode(self) -> Literal["auto", "forced", "required"] | None:
        """None (no tools), "auto" (calls may appear in the text), "required" (the answer
        holds at least one call) or "forced" (the whole answer is one named call)."""
        choice = self.options.get("tool_choice")
        if not self.options.get("tools") or choice == "none":
            return None
        if choice == "required":
            return "required"
        return "forced" if isinstance(choice, Mapping) else "auto"


@dataclass
class RequestLimits:
    """What a server accepts."""

    model_names: list[str]  # the first is the default model
    max_images: int = 1
    allow_remote_images: bool = False
    # A request without max_tokens: this many (``serve --max-tokens``), else until the
    # answer ends or the context is full (``context_size`` tokens, as OpenAI and vLLM).
    default_max_tokens: int | None = None
    context_size: int | None = None
    max_messages: int = 4096


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON, refusing what Python's json accepts but JSON does not
    (NaN, Infinity), nesting deeper than :data:`MAX_JSON_DEPTH`, and lone surrogates."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON value")

    try:
        body = json.loads(raw, parse_constant=no_constants)
    except RecursionError:
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, child in items:
                if isinstance(key, str):
                    stack.append((key, depth))
                stack.append((child, depth + 1))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "the request body holds an invalid \\u escape (a lone surrogate)") from None
    return body


def parse_chat_request(body: Any, limits: RequestLimits) -> ChatRequest:
    """Check a chat-completions body; raise :class:`ApiError` naming the bad field."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model", limits.model_names[0])
    if model not in limits.model_names:
        served = ", ".join(limits.model_names)
        raise ApiError(
            404,
            f"model {model!r} is not served here; this server serves {served}",
            code="model_not_found",
            param="model",
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise ApiError(
            400,
            f"the request has {len(messages)} messages; this server takes at most {limits.max_messages}",
            param="messages",
        )
    checked = [_check_message(m, i, limits) for i, m in enumerate(messages)]
    n_images = sum(1 for m in checked for p in m["content"] if p.get("type") == "image_url")
    if n_images > limits.max_images:
        raise ApiError(
            400,
            f"the request has {n_images} images; this server takes at most {limits.max_images} per prompt "
            "(start it with --limit-mm-per-prompt '{\"image\": N}')",
            param="messages",
        )
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    options: dict[str, Any] = {}
    for name, bounds in _FLOAT_FIELDS.items():
        if body.get(name) is not None:
            options[name] = _number(body[name], name, float, bounds)
    for name, bounds in _INT_FIELDS.items():
        if body.get(name) is not None:
            options[name] = _number(body[name], name, int, bounds)
    if "max_completion_tokens" in options:
        options["max_tokens"] = options.pop("max_completion_tokens")
    if options.get("top_k") == -1:
        options["top_k"] = 0
    requested = options.get("max_tokens")
    if requested is None:
        default = limits.default_max_tokens or limits.context_size
        if default is not None:
            options["max_tokens"] = default
    options.update(_generation_options(body))
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise ApiError(400, "'stop' must be a string or a list of up to 4 strings", param="stop")
        options["stop"] = stop
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
            raise ApiError(400, "'tools' must be a list of function tools", param="tools")
        if tools:
            options["tools"] = tools
    choice = body.get("tool_choice")
    if choice is not None:
        named = choice.get("function") if isinstance(choice, Mapping) else None
        if choice not in ("auto", "none", "required") and not (
            isinstance(named, Mapping) and isinstance(named.get("name"), str)
        ):
            raise ApiError(
                400,
                "'tool_choice' must be 'auto', 'none', 'required' or "
                "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                param="tool_choice",
            )
        options["tool_choice"] = choice
    parallel = body.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise ApiError(400, "'parallel_tool_calls' must be true or false", param="parallel_tool_calls")
        options["parallel_tool_calls"] = parallel
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, Mapping):
            raise ApiError(400, "'response_format' must be an object", param="response_format")
        options["response_format"] = response_format
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    stream_options = body.get("stream_options") or {}
    include_usage = bool(isinstance(stream_options, Mapping) and stream_options.get("include_usage"))
    return ChatRequest(checked, options, stream, include_usage, model, max_tokens=requested)


def _generation_options(body: Mapping[str, Any]) -> dict[str, Any]:
    """logprobs / top_logprobs, the penalties and logit_bias, checked against OpenAI's
    ranges, as ``model.chat`` keywords. Each is left out at its neutral value (logprobs
    off, a penalty of 0, no bias), so plain requests reach the model unchanged."""
    options: dict[str, Any] = {}
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise ApiError(400, "'logprobs' must be true or false", param="logprobs")
    top = body.get("top_logprobs")
    if top is not None:
        top = _number(top, "top_logprobs", int, TOP_LOGPROBS_RANGE)
        if not logprobs:
            raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    if logprobs:
        options["logprobs"] = top or 0  # N alternatives per token; 0: the chosen token's only
    for name, bounds in _PENALTIES.items():
        if body.get(name) is not None:
            value = _number(body[name], name, float, bounds)
            if value:
                options[name] = value
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, Mapping):
            raise ApiError(400, "'logit_bias' must be an object mapping token ids to numbers", param="logit_bias")
        checked: dict[int, float] = {}
        for key, value in bias.items():
            token = str(key).strip()
            if not token.isdigit():
                raise ApiError(400, f"'logit_bias' keys must be token ids, not {key!r}", param="logit_bias")
            checked[int(token)] = _number(value, "logit_bias", float, LOGIT_BIAS_RANGE)
        if checked:
            options["logit_bias"] = checked
    return options


def overflow_error(n_ctx: int, prompt: int, completion: int) -> ApiError:
    """OpenAI's 400 (and wording, which clients such as LiteLLM match) for a prompt plus
    max_tokens over the context."""
    message = (
        f"This model's maximum context length is {n_ctx} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
        "Please reduce the length of the messages or completion."
    )
    return ApiError(400, message, code="context_length_exceeded", param="messages")


def _number(value: Any, name: str, kind: type, bounds: tuple[float, float]) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and isinstance(value, float) and not value.is_integer())
    ):
        raise ApiError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}", param=name)
    low, high = bounds
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low:g} and {high:g}, not {value!r}", param=name)
    return kind(value)


def _check_message(raw: Any, index: int, limits: RequestLimits) -> dict[str, Any]:
    param = f"messages[{index}]"
    if not isinstance(raw, Mapping):
        raise ApiError(400, f"{param} must be an object", param=param)
    role = raw.get("role")
    if role == "developer":  # OpenAI's newer name for the system turn
        role = "system"
    if role not in ROLES:
        raise ApiError(400, f"{param}.role must be developer, {', '.join(ROLES[:-1])} or {ROLES[-1]}", param=param)
    calls = raw.get("tool_calls")
    if calls is not None and not (
        isinstance(calls, list)
        and all(
            isinstance(c, Mapping)
            and isinstance(c.get("function"), Mapping)
            and isinstance(c["function"].get("name"), str)
            and isinstance(c["function"].get("arguments", "{}"), (str, Mapping))
            for c in calls
        )
    ):
        raise ApiError(
            400, f"{param}.tool_calls must be a list of {{'function': {{'name', 'arguments'}}}} objects", param=param
        )
    extra = {"tool_calls": calls} if role == "assistant" and calls else {}
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
            url = _check_image_url(image_url_of(part), param, limits)
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise ApiError(400, f"{param} has a content part of type {kind!r}; use 'text' or 'image_url'", param=param)
    return {"role": role, "content": parts, **extra}


def _check_image_url(url: str | None, param: str, limits: RequestLimits) -> str:
    if url is None:
        raise ApiError(400, f"{param}: image_url needs a 'url' string", param=param)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        return url
    if scheme in ("http", "https"):
        if not limits.allow_remote_images:
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


def data_uri(image: LoadedImage) -> str:
    """A lossless PNG ``data:`` URI of decoded pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (image.width, image.height), image.rgb).save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def request_body(
    model: str,
    messages: Sequence[dict[str, Any]],
    params: Sampling,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A streaming chat-completions request: ``messages`` already in the OpenAI shape."""
    body: dict[str, Any] = {
        "model": model,
        "messages": list(messages),
        "temperature": params.temperature,
        "top_p": params.top_p,
        "min_p": params.min_p,
        "repetition_penalty": params.repetition_penalty,
        "max_tokens": params.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if params.top_k > 0:
        body["top_k"] = params.top_k
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    body.update({k: v for k, v in (extra or {}).items() if v is not None})
    return body


# -- responses -------------------------------------------------------------------------


def message_body(result: ChatResult) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
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
        content.append(
            {
                "token": token,
                "logprob": float(getattr(entry, "logprob", 0.0)),
                "bytes": _token_bytes(token, getattr(entry, "bytes", None)),
                "top_logprobs": [
                    {"token": str(alt), "logprob": float(lp), "bytes": list(str(alt).encode("utf-8"))}
                    for alt, lp in getattr(entry, "top_logprobs", ()) or ()
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
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage_body(result.usage),
    }


def chunk_body(
    completion_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    usage: Usage | None = None,
    logprobs: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``: one delta (with the ``TokenLogprob`` entries of its
    tokens, when logprobs were asked for), or (``delta=None``) the usage chunk."""
    data: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = logprobs_body(logprobs)
    data["choices"] = [] if delta is None else [choice]
    if usage is not None:
        data["usage"] = usage_body(usage)
    return data


def sse(data: Mapping[str, Any]) -> bytes:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


class StreamReader:
    """Reads a chat-completions SSE stream back into text pieces and a :class:`ChatResult`."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.text: list[str] = []
        self.finish: FinishReason = "stop"
        self.usage: dict[str, Any] = {}
        self.calls: dict[int, dict[str, str]] = {}
        self.done = False

    def feed_line(self, line: str) -> str | None:
        """One line of the stream; returns the content it carries, if any."""
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
        out = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            for call in delta.get("tool_calls") or []:
                slot = self.calls.setdefault(int(call.get("index", 0)), {"id": "", "name": "", "arguments": ""})
                fn = call.get("function") or {}
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] += fn.get("name") or ""
                slot["arguments"] += fn.get("arguments") or ""
            if delta.get("content"):
                out.append(delta["content"])
            if choice.get("finish_reason") in ("stop", "length", "tool_calls"):
                self.finish = choice["finish_reason"]
        piece = "".join(out)
        if piece:
            self.text.append(piece)
        return piece or None

    def result(self, timings: Timings) -> ChatResult:
        from lfm2_edge.tools import ToolCall

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
        )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}
