"""OpenAI error bodies, and the one table between lfm2-edge's typed errors and OpenAI
``code`` values (both directions: :func:`api_error` and :func:`error_from_response`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lfm2_edge.errors import ContextOverflowError, ImageError, Lfm2EdgeError, RemoteError

__all__ = ["ERROR_CODES", "ApiError", "api_error", "error_from_response", "model_not_found", "overflow_error"]

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


def api_error(exc: Lfm2EdgeError, param: str | None = None) -> ApiError:
    """The 400 answer for a typed error raised while answering a request; its ``param``
    is the field the error names (``exc.param``), else ``param``, else "messages"."""
    code = next((c for cls, c in ERROR_CODES if isinstance(exc, cls)), None)
    return ApiError(400, str(exc), code=code, param=exc.param or param or "messages")


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


def model_not_found(model: str, served: Sequence[str]) -> ApiError:
    """The 404 for a request that names a model this server does not serve."""
    return ApiError(
        404,
        f"model {model!r} is not served here; this server serves {', '.join(served)}",
        code="model_not_found",
        param="model",
    )


def overflow_error(n_ctx: int, prompt: int, completion: int) -> ApiError:
    """OpenAI's 400 (and wording, which clients such as LiteLLM match) for a prompt plus
    max_tokens over the context."""
    message = (
        f"This model's maximum context length is {n_ctx} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
        "Please reduce the length of the messages or completion."
    )
    return ApiError(400, message, code="context_length_exceeded", param="messages")
