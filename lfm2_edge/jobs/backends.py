"""Where a batch job's chats go: a local model's engine (:class:`LocalBackend`) or
OpenAI-compatible servers (:class:`RemoteBackend`, bounded concurrency per endpoint,
failed requests retried with backoff)."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from lfm2_edge.chat.results import ChatResult
from lfm2_edge.errors import RemoteError
from lfm2_edge.openai.client import RemoteModel

__all__ = ["Backend", "Interrupted", "LocalBackend", "RemoteBackend", "SharedRemote"]


class Interrupted(Exception):
    """The item was in flight when the run stopped: no record, a rerun answers it."""


class Backend(Protocol):
    slots: int
    label: str

    def answer(self, messages: list[dict[str, Any]], options: dict[str, Any], cancel: threading.Event) -> ChatResult:
        """One chat, whole; raise a typed error, or :class:`Interrupted` once ``cancel`` is set."""
        ...

    def image_encodes(self) -> int: ...


class LocalBackend:
    """A local model's engine: as many items at once as it has sequences
    (``n_seq_max``, the CLI's ``--slots``). Each worker runs ``model.chat(...,
    stream=True)`` (``check_call``, ``prepare``, a ``Job`` on the engine), so a stop
    reaches an answer at its next token: the worker closes the stream, which frees the
    sequence. With one worker per sequence no chat ever waits for another's stream."""

    def __init__(self, model: Any, label: str | None = None) -> None:
        self.model = model
        self.slots = int(model.engine.n_slots)
        self.label = label or str(getattr(model, "model_path", "model"))

    def answer(self, messages: list[dict[str, Any]], options: dict[str, Any], cancel: threading.Event) -> ChatResult:
        if cancel.is_set():
            raise Interrupted()
        stream = self.model.chat(messages, stream=True, **options)
        for _ in stream:
            if cancel.is_set():
                stream.close()
                raise Interrupted()
        if cancel.is_set() or stream.result is None:
            raise Interrupted()
        return stream.result

    def image_encodes(self) -> int:
        return int(getattr(self.model, "image_encodes", 0))


_STATUS = re.compile(r"answered (\d{3})")


def _retryable(exc: BaseException) -> bool:
    """A failure worth retrying: the server unreachable, busy (429) or failing (5xx)."""
    if not isinstance(exc, RemoteError):
        return False
    found = _STATUS.search(str(exc))
    return found is None or found.group(1) == "429" or found.group(1).startswith("5")


class RemoteBackend:
    """OpenAI-compatible servers (``lfm2-edge serve``, llama-server, vLLM): at most
    ``per_endpoint`` requests in flight to each, a failed request retried up to
    ``retries`` times with exponential backoff (0.5 s, 1 s, 2 s... with jitter)."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        model: str | None = None,
        api_key: str | None = None,
        system_prompt: str | None = None,
        per_endpoint: int = 4,
        retries: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        self.remotes = [
            RemoteModel(url, model=model, api_key=api_key, system_prompt=system_prompt, allow_private_urls=True)
            for url in endpoints
        ]
        self.slots = per_endpoint * len(self.remotes)
        self.label = ", ".join(r.endpoint for r in self.remotes)
        self.retries, self.backoff_s = retries, backoff_s
        self._gates = [threading.BoundedSemaphore(per_endpoint) for _ in self.remotes]
        self._next = 0
        self._lock = threading.Lock()
        self._down_until = [0.0] * len(self.remotes)

    def _pick(self) -> int:
        """An endpoint with room: round robin over those not marked down (all of them
        when every one is), waiting for room when none has any."""
        now = time.monotonic()
        with self._lock:
            n = len(self.remotes)
            up = [i for i in range(n) if self._down_until[i] <= now] or list(range(n))
            start = self._next % len(up)
            self._next += 1
        order = up[start:] + up[:start]
        for index in order:
            if self._gates[index].acquire(blocking=False):
                return index
        self._gates[order[0]].acquire()
        return order[0]

    def answer(self, messages: list[dict[str, Any]], options: dict[str, Any], cancel: threading.Event) -> ChatResult:
        attempt = 0
        while True:
            index = self._pick()
            try:
                return self.remotes[index].chat(messages, **options)
            except Exception as exc:
                if not _retryable(exc) or attempt >= self.retries:
                    raise
            finally:
                self._gates[index].release()
            delay = self.backoff_s * 2**attempt * (0.75 + 0.5 * random.random())
            with self._lock:  # a failing endpoint gets no request for a while
                self._down_until[index] = time.monotonic() + 4 * delay
            attempt += 1
            if cancel.wait(delay):
                raise Interrupted()

    def image_encodes(self) -> int:
        return 0

    def close(self) -> None:
        for remote in self.remotes:
            remote.close()


class SharedRemote(RemoteBackend):
    """A :class:`RemoteBackend` around an app's own :class:`RemoteModel`."""

    def __init__(self, remote: RemoteModel, per_endpoint: int = 4) -> None:
        self.remotes = [remote]
        self.slots = per_endpoint
        self.label = remote.endpoint
        self.retries, self.backoff_s = 4, 0.5
        self._gates = [threading.BoundedSemaphore(per_endpoint)]
        self._next = 0
        self._lock = threading.Lock()
        self._down_until = [0.0] * len(self.remotes)
