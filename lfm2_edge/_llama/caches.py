"""Bounded caches that let a model skip work it has done before.

* :class:`EmbeddingCache` keeps the vision encoder's output per image tile, so the same
  photo asked about in a new conversation (or a new server request) is not encoded again.
* :class:`StateCache` keeps llama.cpp sequence states (KV cache *and* the short-conv
  recurrent state) saved at the end of a prompt, keyed by what was evaluated. LFM2 is
  hybrid: its recurrent state cannot be rolled back to an earlier position, so a prompt
  can only continue from a state whose whole history is a prefix of the new prompt.

Both are LRU caches bounded in bytes and owned by one model instance: nothing here is
shared between models.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, Union

__all__ = ["ByteLRU", "EmbeddingCache", "EmbeddingKey", "Item", "StateCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# One evaluated position run: a text token id, or an image tile ("img", digest, tile, n_pos).
Item = Union[int, tuple[str, str, int, int]]


class ByteLRU(Generic[K, V]):
    """A least-recently-used map whose values are bytes-like, bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: K, value: V, size: int) -> None:
        """Store ``value`` (``size`` bytes); evicts the oldest entries to make room.

        A value larger than the whole cache is not stored.
        """
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, freed) = self._data.popitem(last=False)
                self._bytes -= freed

    def items(self) -> list[tuple[K, V]]:
        """A snapshot of the entries, oldest first (does not count as use)."""
        with self._lock:
            return [(k, v) for k, (v, _) in self._data.items()]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


@dataclass(frozen=True)
class EmbeddingKey:
    """An image tile's identity: its pixels' digest, the tile's place in the image, the
    projector and the image-token budget that shaped it."""

    digest: str
    tile: int
    n_tokens: int
    mmproj: str
    budget: tuple[int | None, int | None]


class EmbeddingCache(ByteLRU[EmbeddingKey, object]):
    """Vision-encoder output per image tile (a ctypes float array each)."""


class StateCache(ByteLRU[tuple[Item, ...], Any]):
    """Saved sequence states (:class:`lfm2_edge._llama.state.SavedState`), keyed by the
    items evaluated to reach them."""

    def longest_prefix_of(self, items: Sequence[Item]) -> tuple[tuple[Item, ...], Any] | None:
        """The saved state whose history is the longest prefix of ``items`` that can be
        continued: a strict prefix, or all of ``items`` when its logits were saved too
        (there is nothing left to evaluate, and sampling needs logits)."""
        best: tuple[Item, ...] | None = None
        for key, state in self.items():
            if len(key) > len(items) or (best is not None and len(key) <= len(best)):
                continue
            if len(key) == len(items) and getattr(state, "logits", None) is None:
                continue
            if tuple(items[: len(key)]) == key:
                best = key
        if best is None:
            return None
        state = self.get(best)  # marks it recently used
        return (best, state) if state is not None else None
