"""Several sequences in one llama.cpp context: the ctypes side of the batched engine.

A :class:`Runtime` made with ``n_seq_max=N`` holds N sequences, each with its own KV
stream (``n_ctx_seq`` cells) and its own LFM2 short-conv state. :class:`Sequences`
evaluates a prompt into one of them in :class:`Unit` pieces (so a scheduler can
interleave a long prompt with other sequences' decoding), decodes one token for every
generating sequence in one ``llama_decode`` batch, and saves / loads a sequence's state
(``llama_state_seq_*``) into whichever sequence is free.

Exactness: a prompt's units are cut where its content alone decides (save points,
chunk edges, after each assistant header, every ``n_batch`` tokens: see
:mod:`lfm2_edge._llama.cuts`), and each unit is decoded on its own (never mixed with
other sequences' tokens, which llama.cpp's hybrid memory would split into equal-length
micro-batches). So a state saved at a save point continues exactly as a fresh context
evaluating the whole prompt would.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp

from lfm2_edge._llama.caches import EmbeddingKey, Item
from lfm2_edge._llama.context import Runtime
from lfm2_edge._llama.projector import PromptChunks
from lfm2_edge._llama.state import SavedState, save_sequence
from lfm2_edge.errors import ContextOverflowError, GenerationError

__all__ = ["Sequences", "Unit", "bare_decode", "plan_units"]


@dataclass(frozen=True)
class Unit:
    """One ``llama_decode`` worth of a prompt: text tokens, or one image chunk."""

    start: int  # index into the prompt's items
    end: int
    chunk: int  # the image's chunk index, or -1 for text
    tokens: tuple[int, ...] = ()
    n_pos: int = 0  # positions it fills


def plan_units(rt: Runtime, chunks: PromptChunks, items: Sequence[Item], start: int, end: int) -> list[Unit]:
    """``items[start:end]`` cut into units: an image chunk each, text pieces cut after
    each assistant header and every ``n_batch`` tokens."""
    units: list[Unit] = []

    def text(tokens: list[int], offset: int, lo: int, hi: int) -> None:
        for a, b in rt.cuts.pieces(tokens, lo, hi):
            for s in range(a, b, rt.n_batch):
                part = tuple(tokens[s : min(b, s + rt.n_batch)])
                units.append(Unit(offset + s, offset + s + len(part), -1, part, len(part)))

    if chunks.tokens is not None or rt.projector is None:
        text([t for t in items if isinstance(t, int)], 0, start, end)
        return units
    lo = 0
    for i, info in enumerate(chunks.info):
        hi = lo + (1 if info.is_image else info.n_tokens)
        if hi > start and lo < end:
            if info.is_image:
                units.append(Unit(lo, hi, i, (), info.n_pos))
            else:
                run = [t for t in items[lo:hi] if isinstance(t, int)]
                text(run, lo, max(0, start - lo), end - lo)
        lo = hi
    return units


class Sequences:
    """The sequences of one runtime's context. Not thread-safe: one scheduler drives it."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.n_seq = rt.n_seq_max
        self.capacity = max(rt.n_batch, rt.n_seq_max)
        self._batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)
        self._mem = llama_cpp.llama_get_memory(rt.ctx)

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None

    def __del__(self) -> None:
        self.close()

    # -- state -------------------------------------------------------------------

    def clear(self, seq: int) -> None:
        """Forget sequence ``seq``: its KV cells and its recurrent state."""
        llama_cpp.llama_memory_seq_rm(self._mem, seq, -1, -1)

    def save(self, seq: int, *, with_logits: bool = False) -> SavedState:
        """Copy sequence ``seq``'s state out (and the last decoded position's logits,
        which must be ``seq``'s: call it right after that sequence's unit)."""
        return save_sequence(self.rt.ctx, seq, self.rt.n_vocab, with_logits=with_logits)

    def load(self, state: SavedState, seq: int) -> bool:
        """Make sequence ``seq`` hold a saved state (from any sequence); False when
        llama.cpp refuses it (the sequence is then empty)."""
        self.clear(seq)
        if llama_cpp.llama_state_seq_set_data(self.rt.ctx, state.data, state.size, seq) == 0:
            self.clear(seq)
            return False
        return True

    # -- evaluation --------------------------------------------------------------

    def eval_unit(
        self, chunks: PromptChunks, items: Sequence[Item], unit: Unit, seq: int, pos: int
    ) -> tuple[int, float]:
        """Evaluate one unit into ``seq`` at ``pos``; returns the new position and the
        seconds spent on an image. The last token's logits are the context's last."""
        rt = self.rt
        if unit.chunk >= 0:
            projector = rt.projector
            assert projector is not None
            item = items[unit.start]
            assert not isinstance(item, int)
            info = chunks.info[unit.chunk]
            key = EmbeddingKey(item[1], item[2], info.n_tokens, str(projector.path), projector.budget)
            t0 = time.perf_counter()
            new_pos = projector.eval_image(chunks, unit.chunk, key, rt.ctx, pos, rt.n_batch, seq)
            return new_pos, time.perf_counter() - t0
        b = self._batch
        n = len(unit.tokens)
        for i, token in enumerate(unit.tokens):
            b.token[i] = token
            b.pos[i] = pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = i == n - 1
        b.n_tokens = n
        self._decode()
        return pos + n, 0.0

    def decode_step(self, entries: Sequence[tuple[int, int, int]]) -> None:
        """Decode one token per sequence, ``(seq, pos, token)`` each, in one batch;
        entry ``i``'s logits are then row ``i`` (see :meth:`row_logits`). Give the entries in
        ascending sequence order: a hybrid model's batch is computed in one micro-batch
        per run of consecutive sequence ids (llama_batch_allocr::split_equal)."""
        b = self._batch
        for i, (seq, pos, token) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1
        b.n_tokens = len(entries)
        self._decode()

    def row_logits(self, row: int) -> Any:
        """The logits of row ``row`` of the last decode (-1: its last)."""
        return llama_cpp.llama_get_logits_ith(self.rt.ctx, row)

    def _decode(self) -> None:
        rc = llama_cpp.llama_decode(self.rt.ctx, self._batch)
        if rc != 0:
            if rc == 1:
                raise ContextOverflowError(
                    f"no room left in a sequence of {self.rt.n_ctx_seq} tokens; raise --ctx or lower --max-tokens"
                )
            raise GenerationError(f"llama_decode failed (code {rc})")


def bare_decode(rt: Runtime, prompt: Sequence[int], sampler: Any, n: int) -> tuple[int, float]:
    """The bare llama.cpp loop on sequence 0 of ``rt``'s context (``llama_batch_get_one``,
    sample, decode one token), with none of the engine's per-token work: what ``bench``
    holds the engine's decode to. Evaluates ``prompt``, then up to ``n`` tokens after the
    first sampled one; returns how many and the seconds they took. Clears the context
    before and after; run it on the engine's thread (``Engine.call``)."""
    mem = llama_cpp.llama_get_memory(rt.ctx)
    llama_cpp.llama_memory_clear(mem, True)
    try:
        arr = (llama_cpp.llama_token * len(prompt))(*prompt)
        if llama_cpp.llama_decode(rt.ctx, llama_cpp.llama_batch_get_one(arr, len(prompt))) != 0:
            return 0, 0.0
        one = (llama_cpp.llama_token * 1)()
        token = sampler.sample(rt.ctx)
        count = 0
        t0 = time.perf_counter()
        while count < n and not rt.is_end(token):
            one[0] = token
            if llama_cpp.llama_decode(rt.ctx, llama_cpp.llama_batch_get_one(one, 1)) != 0:
                break
            token = sampler.sample(rt.ctx)
            count += 1
        return count, time.perf_counter() - t0
    finally:
        llama_cpp.llama_memory_clear(mem, True)
