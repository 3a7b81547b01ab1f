"""The async API: ``await model.achat(...)`` and ``async for piece in model.achat(..., stream=True)``.

One implementation for every model class (:class:`lfm2_edge.VisionModel`,
:class:`lfm2_edge.TextModel`, :class:`lfm2_edge.RemoteModel`), written on their
blocking ``chat()``: the chat runs in a worker thread, which hands its pieces to the
event loop through an :class:`asyncio.Queue`, so the loop (asyncio, a Qt app's qasync
loop) never waits on llama.cpp or the network.

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
import inspect
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from lfm2_edge.results import ChatResult, ChatStream

if TYPE_CHECKING:
    from lfm2_edge.images import ImagesArg
    from lfm2_edge.prompt import MessageInput
    from lfm2_edge.results import ChatModel

__all__ = ["AsyncChatMixin", "AsyncChatStream"]

_LOCKS_LOCK = threading.Lock()


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


async def _drain(stream: AsyncChatStream) -> ChatResult:
    async for _ in stream:
        pass
    assert stream.result is not None
    return stream.result


class AsyncChatMixin:
    """``achat()`` for a class with the shared blocking ``chat()`` (:class:`~lfm2_edge.results.ChatModel`)."""

    #: whether this model answers one chat at a time (local models: one llama.cpp context)
    _achat_serial: bool = True

    @overload
    def achat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = ...,
        *,
        stream: Literal[False] = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        tool_choice: str | Mapping[str, Any] | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        **options: Any,
    ) -> Coroutine[Any, Any, ChatResult]: ...

    @overload
    def achat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = ...,
        *,
        stream: Literal[True],
        tools: Sequence[Mapping[str, Any]] | None = ...,
        tool_choice: str | Mapping[str, Any] | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        **options: Any,
    ) -> AsyncChatStream: ...

    def achat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = None,
        *,
        stream: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        response_format: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Coroutine[Any, Any, ChatResult] | AsyncChatStream:
        """:meth:`chat` for asyncio: ``await model.achat(...)`` gives the
        :class:`~lfm2_edge.ChatResult`; ``model.achat(..., stream=True)`` (no ``await``)
        an :class:`AsyncChatStream` to ``async for`` over. The arguments are
        :meth:`chat`'s; sampling options are checked here, at the call.
        """
        from lfm2_edge.sampling import Sampling

        model = cast("ChatModel", self)
        defaults = getattr(self, "sampling", None)
        if isinstance(defaults, Sampling):  # an unknown or out-of-range option raises now
            own = inspect.signature(model.chat).parameters  # grammar, logprobs, ...: chat's own
            defaults.updated(**{k: v for k, v in options.items() if k not in own})
        any_images = cast(Any, images)

        def start() -> ChatStream:
            return model.chat(
                prompt_or_messages,
                any_images,
                stream=True,
                tools=tools,
                tool_choice=tool_choice,
                response_format=response_format,
                **options,
            )

        out = AsyncChatStream(start, self._achat_turn())
        return out if stream else _drain(out)

    def _achat_turn(self) -> threading.Lock | None:
        if not self._achat_serial:
            return None
        with _LOCKS_LOCK:
            lock: threading.Lock | None = self.__dict__.get("_achat_lock")
            if lock is None:
                lock = self.__dict__["_achat_lock"] = threading.Lock()
        return lock
