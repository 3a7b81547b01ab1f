"""lfm2-edge's llama.cpp layer: everything that calls llama.cpp, mtmd or ggml via ctypes.

- :mod:`.context`: :class:`Runtime`, a model + context: tokenize, evaluate, save and
  load state, and the decode loop (:meth:`Runtime.generate`)
- :mod:`.state`: :class:`SavedState`, a sequence's state copied out of a context
- :mod:`.projector`: mtmd's :class:`Projector` and tokenized :class:`PromptChunks`
- :mod:`.sampler`: :class:`Sampler` (llama.cpp sampler chains), log-probabilities
- :mod:`.cuts`: where a prompt is cut into batches and its states saved
- :mod:`.vocab`: tokenizing, a token's bytes, scans of a whole vocabulary
- :mod:`.log`: llama.cpp's and mtmd's log routing (:func:`set_verbose`)
- :mod:`.ggml`: the ggml backend/device registry, CPU features, build info, threads
- :mod:`.gguf`: a bounds-checked GGUF header reader (no llama.cpp needed)
- :mod:`._private`: every private llama-cpp-python name the package uses

The names below load on first use, so importing the GGUF reader does not load llama.cpp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lfm2_edge._llama.context import Runtime
    from lfm2_edge._llama.ggml import (
        BuildInfo,
        Device,
        build_info,
        default_threads,
        list_backends,
        list_devices,
        simd_features,
    )
    from lfm2_edge._llama.log import set_verbose
    from lfm2_edge._llama.projector import ChunkInfo, Projector, PromptChunks
    from lfm2_edge._llama.state import SavedState
    from lfm2_edge.hub.gguf import GgufSummary, TensorInfo, read_summary

__all__ = [
    "BuildInfo",
    "ChunkInfo",
    "Device",
    "GgufSummary",
    "Projector",
    "PromptChunks",
    "Runtime",
    "SavedState",
    "TensorInfo",
    "build_info",
    "default_threads",
    "list_backends",
    "list_devices",
    "read_summary",
    "set_verbose",
    "simd_features",
]

_HOME = {
    "Runtime": "context",
    "SavedState": "state",
    "BuildInfo": "ggml",
    "Device": "ggml",
    "build_info": "ggml",
    "default_threads": "ggml",
    "list_backends": "ggml",
    "list_devices": "ggml",
    "simd_features": "ggml",
    "GgufSummary": "gguf",
    "TensorInfo": "gguf",
    "read_summary": "gguf",
    "set_verbose": "log",
    "ChunkInfo": "projector",
    "Projector": "projector",
    "PromptChunks": "projector",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"lfm2_edge._llama.{_HOME[name]}"), name)
    raise AttributeError(f"module 'lfm2_edge._llama' has no attribute {name!r}")
