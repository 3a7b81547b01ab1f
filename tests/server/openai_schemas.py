"""The few fragments of OpenAI's OpenAPI description (openai/openai-openapi, read 2026-12)
that the spec tests validate bodies against, written out by hand: only the fields those
tests are about, with the spec's ``required`` lists and enums. Not a copy of the spec."""

from __future__ import annotations

from typing import Any

_INT = {"type": "integer"}
_STR = {"type": "string"}
_NULLABLE_STR = {"anyOf": [_STR, {"type": "null"}]}

MODEL: dict[str, Any] = {  # components.schemas.Model
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {"id": _STR, "object": {"enum": ["model"]}, "created": _INT, "owned_by": _STR},
}

CHAT_COMPLETION_RESPONSE_MESSAGE: dict[str, Any] = {  # components.schemas.ChatCompletionResponseMessage
    "type": "object",
    "required": ["role", "content", "refusal"],
    "properties": {"role": {"enum": ["assistant"]}, "content": _NULLABLE_STR, "refusal": _NULLABLE_STR},
}

_TOP_LOGPROB = {
    "type": "object",
    "required": ["token", "logprob", "bytes"],
    "properties": {
        "token": _STR,
        "logprob": {"type": "number"},
        "bytes": {"anyOf": [{"type": "array", "items": _INT}, {"type": "null"}]},
    },
}
CHAT_COMPLETION_TOKEN_LOGPROB: dict[str, Any] = {  # components.schemas.ChatCompletionTokenLogprob
    **_TOP_LOGPROB,
    "required": ["token", "logprob", "bytes", "top_logprobs"],
    "properties": {**_TOP_LOGPROB["properties"], "top_logprobs": {"type": "array", "items": _TOP_LOGPROB}},
}

FUNCTION_CALL_ARGUMENTS_DONE: dict[str, Any] = {  # components.schemas.ResponseFunctionCallArgumentsDoneEvent
    "type": "object",
    "required": ["type", "item_id", "name", "output_index", "arguments", "sequence_number"],
    "properties": {
        "type": {"enum": ["response.function_call_arguments.done"]},
        "item_id": _STR,
        "name": _STR,
        "output_index": _INT,
        "sequence_number": _INT,
        "arguments": _STR,
    },
}

OUTPUT_MESSAGE: dict[str, Any] = {  # components.schemas.OutputMessage
    "type": "object",
    "required": ["id", "type", "role", "content", "status"],
    "properties": {
        "id": _STR,
        "type": {"enum": ["message"]},
        "role": {"enum": ["assistant"]},
        "content": {"type": "array"},
        "status": {"enum": ["in_progress", "completed", "incomplete"]},
    },
}

RESPONSE_USAGE: dict[str, Any] = {  # components.schemas.ResponseUsage
    "type": "object",
    "required": ["input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details", "total_tokens"],
    "properties": {
        "input_tokens": _INT,
        "input_tokens_details": {
            "type": "object",
            "required": ["cached_tokens", "cache_write_tokens"],
            "properties": {"cached_tokens": _INT, "cache_write_tokens": _INT},
        },
        "output_tokens": _INT,
        "output_tokens_details": {
            "type": "object",
            "required": ["reasoning_tokens"],
            "properties": {"reasoning_tokens": _INT},
        },
        "total_tokens": _INT,
    },
}
