"""Admission for ``lfm2-edge serve``: a FIFO queue (429 when full) in front of the
engines (:class:`lfm2_edge.local.engine.Engine`) of the served models
(:class:`lfm2_edge.server.pool.Pool`). A :class:`Ticket` is a request's place in the
queue; :meth:`Admission.run` holds the model the request names (loading it first when
it is not loaded), posts the request to its least busy engine and hands its typed
events to the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from lfm2_edge.chat.events import Cancelled, Done, Event, Failed, Streamed
from lfm2_edge.chat.results import ChatResult
from lfm2_edge.local.engine import Job
from lfm2_edge.openai import ApiError, ChatRequest
from lfm2_edge.server.pool import Pool

__all__ = ["Admission", "Observer", "Ticket"]

#: ``observer(outcome, result)`` for every request that ends ("served", with its result;
#: "cancelled"; "failed") or is refused ("rejected": the queue was full): /metrics.
Observer = Callable[[str, ChatResult | None], None]


class Ticket:
    """A request's place in the queue, taken before its body is read; its ``cancel``
    event stops the request wherever it is (queued, evaluating or generating)."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.cancel = threading.Event()
        self.outcome = "failed"  # served, cancelled or failed
        self.result: ChatResult | None = None
        self.keep_alive: float | None = admission.pool.keep_alive  # the model's keep-alive after this request
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.admission._release(self.outcome, self.result)


class Admission:
    """Admits chats to the models' engines: each answers as many requests at once as
    its context has sequences (``serve --slots``), decoding them together; a model's
    replicas share its requests, each to the one with the least work. Requests beyond
    the free slots wait in arrival order. The queue's bound is the server's, over all
    models; slots and the requests waiting for them are each model's."""

    def __init__(self, pool: Pool, max_queue: int) -> None:
        self.pool = pool
        self.max_queue = max_queue
        self._pending = 0
        self._lock = threading.Lock()
        self.served = 0  # answers completed
        self.cancelled = 0  # requests stopped because their client went away
        self._jobs: set[Job] = set()  # submitted and not ended
        self.observers: list[Observer] = []

    @property
    def queued(self) -> int:
        """Requests waiting or running."""
        return self._pending

    @property
    def models(self) -> list[Any]:
        """The loaded replicas of every served model."""
        return self.pool.replicas()

    @property
    def slots(self) -> dict[str, int]:
        """Sequences of the loaded models: busy (a request holds it), free, and requests
        waiting for one."""
        engines = [m.engine for m in self.models]
        total = sum(e.n_slots for e in engines)
        busy = sum(e.busy for e in engines)
        return {"total": total, "busy": busy, "free": total - busy, "waiting": sum(e.waiting for e in engines)}

    def admit(self) -> Ticket:
        """A place in the queue, or a 429 when it is full."""
        with self._lock:
            full = self._pending >= self.max_queue
            if not full:
                self._pending += 1
        if full:
            self._notify("rejected", None)
            raise ApiError(
                429,
                f"the server is busy ({self._pending} requests queued); retry shortly",
                type="rate_limit_error",
                code="queue_full",
            )
        return Ticket(self)

    def _release(self, outcome: str, result: ChatResult | None) -> None:
        with self._lock:
            self._pending -= 1
            self.served += outcome == "served"
            self.cancelled += outcome == "cancelled"
        self._notify(outcome, result)

    def _notify(self, outcome: str, result: ChatResult | None) -> None:
        for observer in self.observers:
            observer(outcome, result)

    async def run(self, ticket: Ticket, request: ChatRequest) -> AsyncIterator[Streamed]:
        """Yield the answer's :class:`Reasoning`, :class:`Piece` and :class:`Logprobs`
        events (with ``request.stream``), then its :class:`Done`; a failure raises. Setting
        ``ticket.cancel`` (or closing the iterator) stops the request: a queued one
        never reaches a sequence, a running one frees its sequence at the next step.
        The ticket is released once its sequence is free again."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        cancel = ticket.cancel
        served = self.pool.find(request.model)
        try:
            load_ms = await self.pool.acquire(served, ticket.keep_alive, cancel)
        except BaseException:
            ticket.release()
            raise
        model = min(served.models, key=lambda m: (m.engine.load - m.engine.n_slots, m.engine.load))

        def ended(event: Event) -> None:  # on the event loop
            if isinstance(event, Done):
                if load_ms:  # the wait for the load is part of the request's queue time
                    t = event.result.timings
                    timings = dataclasses.replace(
                        t, load_ms=load_ms, queue_ms=t.queue_ms + load_ms, first_token_ms=t.first_token_ms + load_ms
                    )
                    event = Done(dataclasses.replace(event.result, timings=timings))
                ticket.outcome, ticket.result = "served", event.result
            else:
                ticket.outcome = "cancelled" if isinstance(event, Cancelled) else "failed"
            self.pool.release(served)
            ticket.release()
            events.put_nowait(event)

        def on_event(event: Event) -> None:  # from the engine's thread
            if isinstance(event, (Done, Failed, Cancelled)):
                loop.call_soon_threadsafe(ended, event)
            else:
                loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            call = model.check_call(request.messages, **request.options)
            chat = await asyncio.to_thread(model.prepare, call)
        except BaseException:
            self.pool.release(served)
            ticket.release()
            raise
        job = Job(chat, on_event, stream=request.stream, limit=request.max_tokens, cancel=cancel)
        self._jobs.add(job)
        model.engine.submit(job)
        try:
            while True:
                event = await events.get()
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Cancelled):
                    raise ApiError(499, "the request was cancelled: its client went away", code="cancelled")
                yield event
                if isinstance(event, Done):
                    return
        finally:
            cancel.set()
            self._jobs.discard(job)

    def shutdown(self) -> None:
        """Cancel what this server still has on the engines (after the HTTP server's
        graceful shutdown, nothing). The engines are the models': whoever owns the
        models closes them (``serve`` does, after this)."""
        for job in list(self._jobs):
            job.cancel.set()
