"""Ollama's native API (``/api/chat``, ``/api/generate``, ``/api/tags``, ...), translated
at the edge as :mod:`lfm2_edge.openai` translates OpenAI's: :mod:`.request` reads a body
into the chat request the engine takes, :mod:`.response` writes the NDJSON chunks.
The routes are :mod:`lfm2_edge.server.ollama_routes`.
"""

from __future__ import annotations

from lfm2_edge.ollama.request import OllamaRequest, parse_chat, parse_generate, resolve_model
from lfm2_edge.ollama.response import chat_chunk, error_body, final_fields, generate_chunk, line, now, tool_calls

__all__ = [
    "OllamaRequest",
    "chat_chunk",
    "error_body",
    "final_fields",
    "generate_chunk",
    "line",
    "now",
    "parse_chat",
    "parse_generate",
    "resolve_model",
    "tool_calls",
]
