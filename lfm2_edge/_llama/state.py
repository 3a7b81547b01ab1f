"""A sequence's state copied out of a llama.cpp context (``llama_state_seq_*``): what
:meth:`Sequences.save` returns and :meth:`Sequences.load` loads back."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp

from lfm2_edge.errors import GenerationError

__all__ = ["SavedState", "save_sequence"]


@dataclass(frozen=True)
class SavedState:
    """A sequence's state copied out of a context, and optionally its last logits."""

    data: ctypes.Array[ctypes.c_uint8]
    size: int
    logits: ctypes.Array[ctypes.c_float] | None = None

    @property
    def nbytes(self) -> int:
        return self.size + (ctypes.sizeof(self.logits) if self.logits is not None else 0)


def save_sequence(ctx: int, seq: int, n_vocab: int, *, with_logits: bool = False) -> SavedState:
    """Copy sequence ``seq``'s state (KV cache and recurrent state) out of ``ctx``, and
    the last decoded position's logits when asked."""
    size = llama_cpp.llama_state_seq_get_size(ctx, seq)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, seq)
    if written == 0:
        raise GenerationError("llama.cpp could not save the sequence state")
    logits = None
    if with_logits:
        logits = (ctypes.c_float * n_vocab)()
        ctypes.memmove(logits, llama_cpp.llama_get_logits_ith(ctx, -1), n_vocab * 4)
    return SavedState(buf, written, logits)
