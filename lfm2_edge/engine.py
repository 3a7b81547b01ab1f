"""The engine behind ``lfm2-edge serve``: a FIFO queue (429 when full) in front of one
:class:`lfm2_edge.batching.Scheduler` per model replica. A :class:`Ticket` is a
request's place in the queue; :meth:`Engine.run` streams its answer's events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from lfm2_edge.wire import ApiError, ChatRequest

__all__ = ["Engine", "Ticket"]


class Ticket:
    """A request's place in the queue, taken before its body is read; its ``cancel``
    event stops the request wherever it is (queued, evaluating or generating)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.cancel = threading.Event()
        self.outcome = "failed"  # served, cancelled or failed
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.engine._release(self.outcome)


class Engine:
    """Runs chats on batched models (:class:`lfm2_edge.batching.Scheduler`): each model
    answers as many requests at once as its context has sequences (``serve --slots``),
    decoding them together; several models are replicas, and a request goes to the one
    with the least work. Requests beyond the free slots wait in arrival order."""

    def __init__(self, models: Sequence[Any], max_queue: int) -> None:
        from lfm2_edge.batching import Scheduler

        self._schedulers = [Scheduler(m) for m in models]
        self.max_queue = max_queue
        self._pending = 0
        self._lock = threading.Lock()
        self.served = 0  # answers completed
        self.cancelled = 0  # requests stopped because their client went away

    @property
    def queued(self) -> int:
        """Requests waiting or running."""
        return self._pending

    @property
    def slots(self) -> dict[str, int]:
        """Sequences in all: busy (a request holds it), free, and requests waiting for one."""
        total = sum(s.n_slots for s in self._schedulers)
        busy = sum(s.busy for s in self._schedulers)
        return {"total": total, "busy": busy, "free": total - busy, "waiting": sum(s.waiting for s in self._schedulers)}

    def admit(self) -> Ticket:
        """A place in the queue, or a 429 when it is full."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise ApiError(
                    429,
                    f"the server is busy ({self._pending} requests queued); retry shortly",
                    type="rate_limit_error",
                    code="queue_full",
                )
            self._pending += 1
        return Ticket(self)

    def _release(self, outcome: str) -> None:
        with self._lock:
            self._pending -= 1
            self.served += outcome == "served"
            self.cancelled += outcome == "cancelled"

    async def run(self, ticket: Ticket, request: ChatRequest) -> AsyncIterator[tuple[str, Any]]:
        """Yield ("piece", text) events (with ``request.stream``), then ("done", ChatResult). Setting
        ``ticket.cancel`` (or closing the iterator) stops the request: a queued one never
        reaches a sequence, a running one frees its sequence at the next step. The ticket
        is released once its sequence is free again."""
        from lfm2_edge.batching import Job

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = ticket.cancel
        scheduler = min(self._schedulers, key=lambda s: (s.load - s.n_slots, s.load))
        outcomes = {"done": "served", "cancelled": "cancelled", "error": "failed"}

        def ended(kind: str, value: Any) -> None:  # on the event loop
            ticket.outcome = outcomes[kind]
            ticket.release()
            events.put_nowait((kind, value))

        def emit(kind: str, value: Any) -> None:  # from the scheduler's thread
            if kind in outcomes:
                loop.call_soon_threadsafe(ended, kind, value)
            else:
                loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        try:
            chat = await asyncio.to_thread(scheduler.model.prepare, request.messages, **request.options)
        except BaseException:
            ticket.release()
            raise
        scheduler.submit(Job(chat, emit, cancel, limit=request.max_tokens, stream=request.stream))
        try:
            while True:
                kind, value = await events.get()
                if kind == "error":
                    raise value
                if kind == "cancelled":
                    raise ApiError(499, "the request was cancelled: its client went away", code="cancelled")
                yield kind, value
                if kind == "done":
                    return
        finally:
            cancel.set()

    def shutdown(self) -> None:
        """Finish the answers being generated, cancel those waiting for a slot."""
        for scheduler in self._schedulers:
            scheduler.shutdown()

