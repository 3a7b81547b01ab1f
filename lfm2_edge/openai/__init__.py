"""The OpenAI chat-completions wire format, in both directions.

``lfm2-edge serve`` reads requests and writes responses with it; :class:`RemoteModel`
writes requests and reads responses with it. One package, so the two sides cannot drift:

* :mod:`.errors`: :class:`ApiError` and the one table that maps lfm2-edge's typed errors
  to OpenAI ``code`` values and back (:func:`api_error`, :func:`error_from_response`);
* :mod:`.request`: :func:`parse_chat_request` (server) and :func:`request_body` (client),
  with :func:`image_url_of` reading an ``image_url`` part for both;
* :mod:`.response`: :func:`completion_body`, :func:`chunk_body`, :func:`usage_body`, SSE
  framing (:func:`sse`, :data:`SSE_DONE`, :class:`ChunkEvents`), and :class:`StreamReader`,
  which turns the chunks back into a :class:`ChatResult`.

Every name is importable from here (``from lfm2_edge.openai import ...``).
"""

from __future__ import annotations

from lfm2_edge.openai.errors import ERROR_CODES as ERROR_CODES
from lfm2_edge.openai.errors import ApiError, api_error, error_from_response, model_not_found, overflow_error
from lfm2_edge.openai.request import LOGIT_BIAS_RANGE as LOGIT_BIAS_RANGE
from lfm2_edge.openai.request import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from lfm2_edge.openai.request import ROLES as ROLES
from lfm2_edge.openai.request import TOP_LOGPROBS_RANGE as TOP_LOGPROBS_RANGE
from lfm2_edge.openai.request import ChatRequest, image_url_of, parse_chat_request, request_body
from lfm2_edge.openai.request import RequestLimits as RequestLimits
from lfm2_edge.openai.request import parse_json_body as parse_json_body
from lfm2_edge.openai.response import (
    SSE_DONE,
    ChunkEvents,
    StreamReader,
    chunk_body,
    completion_body,
    logprobs_body,
    sse,
    usage_body,
)
from lfm2_edge.openai.response import message_body as message_body

__all__ = [
    "SSE_DONE",
    "ApiError",
    "ChatRequest",
    "ChunkEvents",
    "StreamReader",
    "api_error",
    "chunk_body",
    "completion_body",
    "error_from_response",
    "image_url_of",
    "logprobs_body",
    "model_not_found",
    "overflow_error",
    "parse_chat_request",
    "request_body",
    "sse",
    "usage_body",
]
