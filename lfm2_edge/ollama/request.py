"""Ollama requests (``/api/chat``, ``/api/generate``) read into the chat request the
engine takes: the body becomes a chat-completions body, checked by
:func:`lfm2_edge.openai.parse_chat_request` (one set of checks for both APIs), so the
core never sees Ollama's shape.

``images`` are base64 strings (never paths: text from the network is data); ``format``
is ``"json"`` or a JSON schema; ``options`` map to the sampling keywords (``num_predict``
is max_tokens, ``repeat_penalty`` the repetition penalty); ``num_ctx`` and the load-time
options (``num_gpu``, ``num_thread``, ...) are accepted and left alone, since the context
is sized when ``serve`` loads the model; options lfm2-edge has no sampler for
(``mirostat``, ``typical_p``, ``tfs_z``, ``repeat_last_n``, ...) are accepted and have no
effect, as in Ollama's own engine for options it lacks.

Two options are lfm2-edge's own: ``options.tool_choice`` ("auto", "none", "required" or a
tool's name) forces a call as OpenAI's ``tool_choice`` does, and ``options.grammar`` (GBNF
text, llama-server's ``grammar``) constrains the answer; Ollama has no such fields, and
clients pass unknown options through unchanged.

``think``: a thinking model's reasoning comes in ``thinking`` (the message's, in
``/api/chat``) unless ``think`` is false, as Ollama's does; LFM2's templates have no
switch that stops the model from thinking, so ``false`` leaves the reasoning out of the
answer (never in ``content``). Ollama's effort levels ("high", ...) are gpt-oss's and
refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lfm2_edge.openai import ApiError, ChatRequest, RequestLimits, parse_chat_request

__all__ = ["OllamaRequest", "parse_chat", "parse_generate", "resolve_model"]

# options -> the chat-completions field of the same meaning
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
    "num_predict": "max_tokens",
    "grammar": "grammar",  # lfm2-edge's own
}
_RENAMED = {f"'{v}'": f"'options.{k}'" for k, v in _OPTIONS.items()}


@dataclass
class OllamaRequest:
    """A checked Ollama request: the chat request for the engine (None when the body
    only loads or unloads the model, as an empty ``messages`` or ``prompt`` does), and
    what the answer echoes."""

    chat: ChatRequest | None
    model: str  # as the client named it
    stream: bool
    keep_alive: Any = None
    think: bool | None = None  # False: leave a thinking model's reasoning out


def resolve_model(name: Any, limits: RequestLimits) -> str:
    """The served name ``name`` stands for: itself, or itself without Ollama's default
    ``:latest`` tag; an Ollama 404 otherwise."""
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required")
    for candidate in (name, name.removesuffix(":latest")):
        if candidate in limits.model_names:
            return candidate
    raise ApiError(404, f"model '{name}' not found")


def _images(raw: Any, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise ApiError(400, f"{where}.images must be a list of base64 strings")
    return [{"type": "image_url", "image_url": {"url": f"data:image;base64,{b64}"}} for b64 in raw]


def _arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value if value is not None else {}, ensure_ascii=False)


def _message(raw: Any, index: int) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(raw, Mapping):
        raise ApiError(400, f"{where} must be an object")
    content = raw.get("content")
    if content is not None and not isinstance(content, str):
        raise ApiError(400, f"{where}.content must be a string")
    images = _images(raw.get("images"), where)
    message: dict[str, Any] = {"role": raw.get("role")}
    message["content"] = [*images, {"type": "text", "text": content or ""}] if images else content or ""
    calls = raw.get("tool_calls")
    if calls:
        if not isinstance(calls, list) or not all(
            isinstance(c, Mapping) and isinstance(c.get("function"), Mapping) for c in calls
        ):
            raise ApiError(400, f"{where}.tool_calls must be a list of {{'function': {{'name', 'arguments'}}}}")
        message["tool_calls"] = [
            {
                "id": str(c.get("id") or f"call_{index}_{i}"),
                "type": "function",
                "function": {
                    "name": c["function"].get("name"),
                    "arguments": _arguments(c["function"].get("arguments")),
                },
            }
            for i, c in enumerate(calls)
        ]
    return message


def _format(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, Mapping):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": dict(value)}}
    raise ApiError(400, 'format must be "json" or a JSON schema object')


def _common(body: Mapping[str, Any], limits: RequestLimits) -> tuple[dict[str, Any], bool]:
    """The chat-completions fields every Ollama request may carry, and whether it streams."""
    chat: dict[str, Any] = {"model": resolve_model(body.get("model"), limits)}
    stream = body.get("stream", True)  # Ollama streams unless told not to
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false")
    chat["stream"] = stream
    think = body.get("think")
    if think is not None and not isinstance(think, bool):
        raise ApiError(400, f"think must be true or false, not {think!r}")
    options = body.get("options") or {}
    if not isinstance(options, Mapping):
        raise ApiError(400, "options must be an object")
    for name, field in _OPTIONS.items():
        value = options.get(name)
        if value is None:
            continue
        if name == "num_predict" and isinstance(value, int) and value < 0:
            continue  # -1: no limit, -2: fill the context (both: until the context is full)
        if name == "top_k" and value == 0:
            continue
        chat[field] = value
    choice = options.get("tool_choice")
    if choice is not None:
        if isinstance(choice, str) and choice not in ("auto", "none", "required"):
            choice = {"type": "function", "function": {"name": choice}}
        chat["tool_choice"] = choice
    fmt = _format(body.get("format"))
    if fmt is not None:
        chat["response_format"] = fmt
    return chat, stream


def _check(chat: dict[str, Any], limits: RequestLimits) -> ChatRequest:
    try:
        return parse_chat_request(chat, limits)
    except ApiError as err:
        message = err.message
        for ours, theirs in _RENAMED.items():
            message = message.replace(ours, theirs)
        raise ApiError(err.status, message) from None


def parse_chat(body: Any, limits: RequestLimits) -> OllamaRequest:
    """Check an ``/api/chat`` body; raise :class:`ApiError` (400 or 404) saying what is wrong."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    chat, stream = _common(body, limits)
    messages = body.get("messages")
    keep_alive = body.get("keep_alive")
    if messages is None or messages == []:  # Ollama: load the model (or unload it, keep_alive 0)
        return OllamaRequest(None, body["model"], stream, keep_alive)
    if not isinstance(messages, list):
        raise ApiError(400, "messages must be a list")
    chat["messages"] = [_message(m, i) for i, m in enumerate(messages)]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
            raise ApiError(400, "tools must be a list of function tools")
        chat["tools"] = [{"type": t.get("type") or "function", "function": t.get("function")} for t in tools]
    return OllamaRequest(_check(chat, limits), body["model"], stream, keep_alive, body.get("think"))


def parse_generate(body: Any, limits: RequestLimits) -> OllamaRequest:
    """Check an ``/api/generate`` body: ``system`` and ``prompt`` (with ``images``) as
    one turn through the model's chat template. ``raw``, ``template``, ``suffix`` and
    a ``context`` to continue are refused: this server renders every prompt with the
    model's own template and keeps no token contexts."""
    if not isinstance(body, Mapping):
        raise ApiError(400, "the request body must be a JSON object")
    chat, stream = _common(body, limits)
    for name in ("raw", "template", "suffix", "context"):
        if body.get(name):
            raise ApiError(
                400,
                f"{name} is not supported here: prompts go through the model's chat template and no token "
                "context is kept; send the conversation to /api/chat instead",
            )
    prompt = body.get("prompt")
    system = body.get("system")
    if prompt is not None and not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    if system is not None and not isinstance(system, str):
        raise ApiError(400, "system must be a string")
    images = _images(body.get("images"), "request")
    if not prompt and not images:  # Ollama: load the model (or unload it, keep_alive 0)
        return OllamaRequest(None, body["model"], stream, body.get("keep_alive"))
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": [*images, {"type": "text", "text": prompt or ""}]})
    chat["messages"] = messages
    return OllamaRequest(_check(chat, limits), body["model"], stream, body.get("keep_alive"), body.get("think"))
