"""Chat-completions requests: checked on the server (:func:`parse_json_body`,
:func:`parse_chat_request`), built on the client (:func:`request_body`),
with :func:`image_url_of` reading an ``image_url`` part for both."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lfm2_edge.chat.messages import ROLES, image_url_of
from lfm2_edge.chat.sampling import Sampling
from lfm2_edge.chat.video import DEFAULT_VIDEO_FPS, DEFAULT_VIDEO_FRAMES
from lfm2_edge.openai.errors import ApiError, model_not_found

__all__ = [
    "ChatRequest",
    "RequestLimits",
    "image_url_of",
    "parse_chat_request",
    "parse_json_body",
    "request_body",
]


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


@dataclass
class ChatRequest:
    """A checked chat-completions request, ready for ``model.chat``."""

    messages: list[dict[str, Any]]
    options: dict[str, Any]  # sampling fields, and tools / tool_choice / response_format
    stream: bool
    include_usage: bool
    model: str

    max_tokens: int | None = None  # as the request asked for it (None: not given)


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
        raise model_not_found(model, limits.model_names)
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
    _share_video_frames(checked, limits.max_images - n_images)
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
                '{"type": "function", "function": {"name": ...}}',
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
    grammar = body.get("grammar")  # llama-server's GBNF field
    if grammar is not None:
        if not isinstance(grammar, str):
            raise ApiError(400, "'grammar' must be GBNF text", param="grammar")
        if grammar:
            options["grammar"] = grammar
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
        elif kind == "video_url":
            parts.append({"type": "video_url", "video_url": _check_video(part, param, limits)})
        else:
            raise ApiError(
                400, f"{param} has a content part of type {kind!r}; use 'text', 'image_url' or 'video_url'", param=param
            )
    return {"role": role, "content": parts, **extra}


def _check_video(part: Mapping[str, Any], param: str, limits: RequestLimits) -> dict[str, Any]:
    """A ``video_url`` part (vLLM's and llama-server's): its URL checked as an image's,
    and our optional ``fps`` / ``max_frames`` beside it (see :mod:`lfm2_edge.chat.video`)."""
    ref = part.get("video_url")
    url = ref.get("url") if isinstance(ref, Mapping) else ref
    checked: dict[str, Any] = {
        "url": _check_image_url(url if isinstance(url, str) and url else None, param, limits, "video_url")
    }
    extra = ref if isinstance(ref, Mapping) else {}
    checked["fps"] = _number(extra.get("fps", DEFAULT_VIDEO_FPS), "fps", float, (0.01, 60.0))
    if extra.get("max_frames") is not None:
        checked["max_frames"] = _number(extra["max_frames"], "max_frames", int, (1, 1 << 10))
    return checked


def _share_video_frames(messages: list[dict[str, Any]], places: int) -> None:
    """Give each video its frames out of the image places the still images left: its
    ``max_frames`` (default :data:`DEFAULT_VIDEO_FRAMES`), at most an equal share."""
    videos = [p["video_url"] for m in messages for p in m["content"] if p.get("type") == "video_url"]
    if not videos:
        return
    if places < len(videos):
        raise ApiError(
            400,
            f"the request has {len(videos)} video(s) and room for {max(places, 0)} more image(s); each video's "
            "frames are images of the prompt (start the server with --limit-mm-per-prompt '{\"image\": N}')",
            param="messages",
        )
    for video in videos:
        video["max_frames"] = min(video.get("max_frames", DEFAULT_VIDEO_FRAMES), places // len(videos))


def _check_image_url(url: str | None, param: str, limits: RequestLimits, kind: str = "image_url") -> str:
    if url is None:
        raise ApiError(400, f"{param}: {kind} needs a 'url' string", param=param)
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
    raise ApiError(400, f"{param}: {kind} must be a data: URI or an http(s) URL, not {scheme or 'a path'}", param=param)


def request_body(
    model: str,
    messages: Sequence[dict[str, Any]],
    params: Sampling,
    extra: Mapping[str, Any] | None = None,
    *,
    logprobs: int | None = None,
) -> dict[str, Any]:
    """A streaming chat-completions request: ``messages`` already in the OpenAI shape;
    ``extra`` fields are sent when not None (``grammar`` is llama-server's and ours)."""
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
    for name in ("presence_penalty", "frequency_penalty"):
        if value := getattr(params, name):
            body[name] = value
    if params.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in params.logit_bias}
    if logprobs is not None:
        body["logprobs"] = True
        if logprobs:
            body["top_logprobs"] = logprobs
    body.update({k: v for k, v in (extra or {}).items() if v is not None})
    return body
