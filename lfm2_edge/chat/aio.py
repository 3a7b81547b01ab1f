"""The async API: ``await model.achat(...)`` and ``async for piece in model.achat(..., stream=True)``.

One implementation for every model class (``ChatModel.achat`` in
:mod:`lfm2_edge.chat.contract`), written on their blocking streams: the chat runs in a
worker thread, which hands its pieces to the event loop through an
:class:`asyncio.Queue`, so the loop (asyncio, a Qt app's qasync loop) never waits on
llama.cpp or the network.

Stopping: :meth:`AsyncChatStream.aclose` (or leaving ``async with stream:``), or
cancelling the task that awaits ``achat()`` or iterates the stream, asks the worker to
stop at the next piece and waits for it to do so; the stream's :attr:`~AsyncChatStream.result`
then holds the text and usage so far, and the model is free for the next call. A
cancelled ``achat()`` raises :class:`asyncio.CancelledError` as usual, once the
generation has stopped.

A local model answers one ``achat()`` at a time (the others wait their turn, each
gets its whole answer); a :class:`~lfm2_edge.RemoteModel` sends them concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

from lfm2_edge.chat.results import ChatResult, ChatStream

__all__ = ["AsyncChatStream", "drain"]


@dataclass(frozen=True)
class _End:
    result: ChatResult | None
    error: BaseException | None


class AsyncChatStream:
    """An async iterator of text pieces; :attr:`result` is set once it is exhausted or
    closed. Generation starts at the first ``__anext__`` (as a :class:`ChatStream`
    starts at its first ``next()``).

    >>> async with model.achat("Describe it.", images="cat.jpg", stream=True) as stream:
    ...     async for piece in stream:
    ...         print(piece, end="")
    >>> stream.result.usage.completion_tokens
    """

    def __init__(self, start: Callable[[], ChatStream], turn: threading.Lock | None = None) -> None:
        self.result: ChatResult | None = None
        self._start = start
        self._turn = turn  # held by the worker for the whole chat: one at a time per model
        self._stop = threading.Event()
        self._queue: asyncio.Queue[str | _End] | None = None
        self._done: asyncio.Future[None] | None = None
        self._finished = False

    # -- the async iterator ---------------------------------------------------------

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> str:
        if self._finished:
            raise StopAsyncIteration
        queue = self._begin()
        try:
            item = await queue.get()
        except asyncio.CancelledError:
            await self._halt()
            raise
        if isinstance(item, _End):
            self._finished = True
            self.result = item.result
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop generating and wait until it has stopped; :attr:`result` then holds the
        text and usage so far (the model stays usable). A stream closed before its
        first piece was asked for never started and has no result (``None``)."""
        if self._queue is None:
            self._stop.set()
            self._finished = True
            return
        await self._halt()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """Whether the stream has ended (exhausted, closed or failed)."""
        return self._finished

    # -- the worker -----------------------------------------------------------------

    def _begin(self) -> asyncio.Queue[str | _End]:
        if self._queue is None:
            loop = asyncio.get_running_loop()
            self._queue = asyncio.Queue()
            self._done = loop.create_future()
            worker = threading.Thread(
                target=self._work, args=(loop, self._queue, self._done), name="lfm2-edge-achat", daemon=True
            )
            worker.start()
        return self._queue

    async def _halt(self) -> None:
        """Ask the worker to stop and wait for it; take its result (an error is dropped:
        the caller asked to stop)."""
        self._stop.set()
        if self._done is not None and not self._done.done():
            await asyncio.shield(self._done)
        if not self._finished and self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if isinstance(item, _End):
                    self.result = item.result
        self._finished = True

    def _work(
        self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | _End], done: asyncio.Future[None]
    ) -> None:
        def post(item: str | _End) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                self._stop.set()

        result: ChatResult | None = None
        error: BaseException | None = None
        try:
            with self._turn if self._turn is not None else contextlib.nullcontext():
                if not self._stop.is_set():
                    stream = self._start()
                    try:
                        for piece in stream:
                            post(piece)
                            if self._stop.is_set():
                                break
                    finally:
                        stream.close()  # keeps the text so far when stopped early
                    result = stream.result
        except BaseException as exc:  # delivered to the awaiting task
            error = exc
        post(_End(result, error))
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_set_done, done)


def _set_done(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


async def drain(stream: AsyncChatStream) -> ChatResult:
    """The result of a whole stream (``await model.achat(...)``)."""
    async for _ in stream:
        pass
    assert stream.result is not None
    return stream.result
