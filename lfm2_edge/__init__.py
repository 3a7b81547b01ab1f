"""lfm2-edge: run Liquid AI's LFM2-VL vision-language models on laptops, phones and Pis.

The public API:

* :class:`VisionModel` (LFM2-VL, images and text), :class:`TextModel` (LFM2 text
  models) and :class:`RemoteModel` (the same chat against an OpenAI-compatible
  server): ``chat()`` returns a :class:`ChatResult` (text, tool calls, :class:`Usage`,
  :class:`Timings`, per-token :class:`TokenLogprob` when asked for), ``chat(...,
  stream=True)`` a :class:`ChatStream`; for asyncio, ``await model.achat(...)`` and
  ``model.achat(..., stream=True)``, an :class:`AsyncChatStream` (:mod:`lfm2_edge.chat.aio`);
  ``VisionModel.from_pretrained(ref, progress=...)`` downloads a model by name, with a
  progress callback;
* :class:`Sampling`: temperature, top-p/top-k/min-p, repetition / presence / frequency
  penalties, logit bias, seed, stop;
* the errors, all subclasses of :class:`Lfm2EdgeError` with a one-line message:
  :class:`ModelFileError`, :class:`ModelMismatchError`, :class:`ImageError`,
  :class:`ContextOverflowError`, :class:`GenerationError`, :class:`ModelClosedError`,
  :class:`InvalidParameterError`, :class:`UnknownModelError`,
  :class:`UnknownQuantError`, :class:`HubError`, :class:`HubUnavailableError`,
  :class:`AccessDeniedError`, :class:`DownloadError`, :class:`RemoteError`.

Also :class:`ChatSession` (a conversation kept to the context), :class:`Lfm2VlChatHandler`
(a chat handler for ``llama_cpp.Llama``), :class:`ChatModel` (the contract every model
class fills), :class:`ToolCall`; :mod:`lfm2_edge.hub.catalog` (the models known by name, with their cards' defaults),
:mod:`lfm2_edge.hub.download` (the hub cache), :mod:`lfm2_edge.prompt.tokens` (LFM2's special tokens) and, for tests,
:mod:`lfm2_edge.testing` (synthetic models).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The one lazy import table (as huggingface_hub's): a name is imported from its module on
# first use, so `import lfm2_edge` and `lfm2-edge --help` load neither llama.cpp nor
# FastAPI. Every public name lives in exactly one module.
_LAZY: dict[str, str] = {
    "AccessDeniedError": "lfm2_edge.errors",
    "AsyncChatStream": "lfm2_edge.chat.aio",
    "ChatModel": "lfm2_edge.chat.contract",
    "ChatResult": "lfm2_edge.chat.results",
    "ChatSession": "lfm2_edge.chat.session",
    "ChatStream": "lfm2_edge.chat.results",
    "ContextOverflowError": "lfm2_edge.errors",
    "CpuMismatchError": "lfm2_edge.errors",
    "DownloadError": "lfm2_edge.errors",
    "GenerationError": "lfm2_edge.errors",
    "HubError": "lfm2_edge.errors",
    "HubUnavailableError": "lfm2_edge.errors",
    "ImageError": "lfm2_edge.errors",
    "InvalidParameterError": "lfm2_edge.errors",
    "Lfm2EdgeError": "lfm2_edge.errors",
    "Lfm2VlChatHandler": "lfm2_edge.local.handler",
    "ModelClosedError": "lfm2_edge.errors",
    "ModelFileError": "lfm2_edge.errors",
    "ModelMismatchError": "lfm2_edge.errors",
    "RemoteError": "lfm2_edge.errors",
    "RemoteModel": "lfm2_edge.openai.client",
    "Sampling": "lfm2_edge.chat.sampling",
    "TextModel": "lfm2_edge.local.model",
    "Timings": "lfm2_edge.chat.results",
    "TokenLogprob": "lfm2_edge.chat.results",
    "ToolCall": "lfm2_edge.chat.results",
    "UnknownModelError": "lfm2_edge.errors",
    "UnknownQuantError": "lfm2_edge.errors",
    "Usage": "lfm2_edge.chat.results",
    "VisionModel": "lfm2_edge.local.model",
}

__all__ = [
    "AccessDeniedError",
    "AsyncChatStream",
    "ChatModel",
    "ChatResult",
    "ChatSession",
    "ChatStream",
    "ContextOverflowError",
    "CpuMismatchError",
    "DownloadError",
    "GenerationError",
    "HubError",
    "HubUnavailableError",
    "ImageError",
    "InvalidParameterError",
    "Lfm2EdgeError",
    "Lfm2VlChatHandler",
    "ModelClosedError",
    "ModelFileError",
    "ModelMismatchError",
    "RemoteError",
    "RemoteModel",
    "Sampling",
    "TextModel",
    "Timings",
    "TokenLogprob",
    "ToolCall",
    "UnknownModelError",
    "UnknownQuantError",
    "Usage",
    "VisionModel",
    "__version__",
]

if TYPE_CHECKING:
    from lfm2_edge.chat.aio import AsyncChatStream
    from lfm2_edge.chat.contract import ChatModel
    from lfm2_edge.chat.results import ChatResult, ChatStream, Timings, TokenLogprob, ToolCall, Usage
    from lfm2_edge.chat.sampling import Sampling
    from lfm2_edge.chat.session import ChatSession
    from lfm2_edge.errors import (
        AccessDeniedError,
        ContextOverflowError,
        CpuMismatchError,
        DownloadError,
        GenerationError,
        HubError,
        HubUnavailableError,
        ImageError,
        InvalidParameterError,
        Lfm2EdgeError,
        ModelClosedError,
        ModelFileError,
        ModelMismatchError,
        RemoteError,
        UnknownModelError,
        UnknownQuantError,
    )
    from lfm2_edge.local.handler import Lfm2VlChatHandler
    from lfm2_edge.local.model import TextModel, VisionModel
    from lfm2_edge.openai.client import RemoteModel


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lfm2_edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
