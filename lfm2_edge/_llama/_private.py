"""Every private llama-cpp-python name lfm2-edge relies on, and why, in one module.

llama-cpp-python is pinned exactly (see ``pyproject.toml``); when the pin moves, these
are the names to check. Everything else in lfm2-edge imports them from here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import llama_cpp

# Loads a shared library from llama_cpp/lib with the platform's file names and search
# rules (and CUDA/HIP DLL directories on Windows). llama-cpp-python loads libggml itself
# but exposes no handle to it; its device registry (lfm2_edge._llama.ggml) needs one.
from llama_cpp._ctypes_extensions import load_shared_library

# Turns a completion (or a completion stream) into a chat completion, exactly as
# llama-cpp-python's own chat handlers do; Lfm2VlChatHandler returns the same shapes.
from llama_cpp.llama_chat_format import _convert_completion_to_chat as convert_completion_to_chat

__all__ = [
    "clear_llama_memory",
    "convert_completion_to_chat",
    "llama_context_ptr",
    "llama_exit_stack",
    "load_shared_library",
]


def llama_exit_stack(llama: llama_cpp.Llama) -> contextlib.ExitStack:
    """``Llama._stack``: what ``Llama.close()`` unwinds. A chat handler that owns native
    resources (the projector) registers their release here, to be freed with the model
    and before it (mtmd holds a pointer to the llama model)."""
    stack: contextlib.ExitStack = llama._stack
    return stack


def llama_context_ptr(llama: llama_cpp.Llama) -> Any:
    """``Llama._ctx.ctx``: the raw ``llama_context*``. mtmd decodes image embeddings
    straight into it; ``Llama`` has no public accessor."""
    return llama._ctx.ctx


def clear_llama_memory(llama: llama_cpp.Llama) -> None:
    """``Llama._ctx.kv_cache_clear()``: ``Llama.reset()`` only rewinds its token count,
    and LFM2's recurrent state cannot be rewound, so a new prompt starts from a cleared
    memory."""
    llama._ctx.kv_cache_clear()
