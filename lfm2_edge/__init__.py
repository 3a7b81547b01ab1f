"""lfm2-edge: run Liquid AI's LFM2-VL vision-language models on laptops, phones and Pis.

The public API:

* :class:`VisionModel` (LFM2-VL, images and text), :class:`TextModel` (LFM2 text
  models) and :class:`RemoteModel` (the same chat against an OpenAI-compatible
  server): ``chat()`` returns a :class:`ChatResult` (text, tool calls, :class:`Usage`,
  :class:`Timings`, per-token :class:`TokenLogprob` when asked for), ``chat(...,
  stream=True)`` a :class:`ChatStream`; for asyncio, ``await model.achat(...)`` and
  ``model.achat(..., stream=True)``, an :class:`AsyncChatStream` (:mod:`lfm2_edge.aio`);
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

Also: :mod:`lfm2_edge.catalog` (the models known by name, with their cards' defaults),
:mod:`lfm2_edge.hub` (the hub cache), :mod:`lfm2_edge.handler` (a chat handler for
``llama_cpp.Llama``), :mod:`lfm2_edge.tokens` (LFM2's special tokens) and, for tests,
:mod:`lfm2_edge.testing` (synthetic models).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "AsyncChatStream",
    "ChatResult",
    "ChatStream",
    "ContextOverflowError",
    "DownloadError",
    "GenerationError",
    "HubError",
    "HubUnavailableError",
    "ImageError",
    "InvalidParameterError",
    "Lfm2EdgeError",
    "ModelClosedError",
    "ModelFileError",
    "ModelMismatchError",
    "RemoteError",
    "RemoteModel",
    "Sampling",
    "TextModel",
    "Timings",
    "TokenLogprob",
    "UnknownModelError",
    "UnknownQuantError",
    "Usage",
    "VisionModel",
    "__version__",
]

from lfm2_edge.aio import AsyncChatStream
from lfm2_edge.errors import (
    AccessDeniedError,
    ContextOverflowError,
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
from lfm2_edge.results import ChatResult, ChatStream, Timings, TokenLogprob, Usage
from lfm2_edge.sampling import Sampling

if TYPE_CHECKING:
    from lfm2_edge.model import TextModel, VisionModel
    from lfm2_edge.remote import RemoteModel


def __getattr__(name: str) -> Any:
    # The model classes load llama.cpp's shared libraries; import them on first use
    # so that `lfm2-edge --help` and the error types stay cheap.
    if name in ("TextModel", "VisionModel"):
        from lfm2_edge import model

        return getattr(model, name)
    if name == "RemoteModel":
        from lfm2_edge.remote import RemoteModel

        return RemoteModel
    raise AttributeError(f"module 'lfm2_edge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
