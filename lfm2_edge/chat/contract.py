"""The chat contract, written once: :class:`ChatModel`'s ``chat()`` and ``achat()``.

Every model class (:class:`lfm2_edge.VisionModel` and :class:`lfm2_edge.TextModel`,
which run on this device, and :class:`lfm2_edge.RemoteModel`, which sends the chat to
an OpenAI-compatible server) inherits them, so all of them take exactly the same
keywords and return the same types. A subclass supplies one step: :meth:`ChatModel._open`,
which answers a checked :class:`ChatCall` as a :class:`ChatStream`.

``achat()`` runs that stream in a worker thread and hands its pieces to the event loop
(:class:`lfm2_edge.chat.aio.AsyncChatStream`); a model that answers one chat at a time
(a local one) runs one ``achat()`` at a time, the others wait their turn.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, overload

from lfm2_edge.chat.aio import AsyncChatStream, drain
from lfm2_edge.chat.images import ImagesArg
from lfm2_edge.chat.messages import Message, MessageInput, normalize_messages
from lfm2_edge.chat.results import ChatResult, ChatStream
from lfm2_edge.chat.sampling import Sampling
from lfm2_edge.errors import InvalidParameterError

__all__ = ["ChatCall", "ChatModel"]

_LOCKS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ChatCall:
    """One chat call, checked: the conversation (images attached to their turns, not yet
    loaded), the sampling (the model's defaults with the call's overrides), and the
    call's other keywords as :meth:`ChatModel.chat` documents them."""

    messages: list[Message]
    params: Sampling
    tools: Sequence[Mapping[str, Any]] | None = None
    tool_choice: str | Mapping[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: Mapping[str, Any] | None = None
    grammar: str | None = None
    logprobs: int | None = None  # alternatives per token; None: no logprobs


class ChatModel(ABC):
    """What every model class offers: ``chat()``, ``achat()``, ``close()``, and the
    defaults a call starts from (``sampling``, ``system_prompt``: the model card's)."""

    sampling: Sampling
    system_prompt: str | None
    #: whether this model answers one chat at a time (a local model: one engine)
    _serial: ClassVar[bool] = True

    @abstractmethod
    def _open(self, call: ChatCall, *, stream: bool) -> ChatStream:
        """Answer ``call``: a stream of its pieces that returns the :class:`ChatResult`
        (with ``stream=False`` it may yield nothing and only return it). Nothing may
        run before the stream's first ``next()``."""

    @abstractmethod
    def close(self) -> None: ...

    def check_call(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = None,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: Mapping[str, Any] | None = None,
        grammar: str | None = None,
        logprobs: int | None = None,
        **sampling: Any,
    ) -> ChatCall:
        """The checked :class:`ChatCall` of :meth:`chat`'s arguments: an unknown or
        out-of-range option, or a malformed message, raises here, at the call."""
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0):
            raise InvalidParameterError(
                f"logprobs must be None or a number of alternatives from 0, not {logprobs!r}", param="logprobs"
            )
        if grammar is not None and not isinstance(grammar, str):
            raise InvalidParameterError(f"grammar must be GBNF text, not {type(grammar).__name__}", param="grammar")
        return ChatCall(
            normalize_messages(prompt_or_messages, images),
            self.sampling.updated(**sampling),
            tools,
            tool_choice,
            parallel_tool_calls,
            response_format,
            grammar,
            logprobs,
        )

    @overload
    def chat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = ...,
        *,
        stream: Literal[False] = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        tool_choice: str | Mapping[str, Any] | None = ...,
        parallel_tool_calls: bool | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        grammar: str | None = ...,
        logprobs: int | None = ...,
        **sampling: Any,
    ) -> ChatResult: ...

    @overload
    def chat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = ...,
        *,
        stream: Literal[True],
        tools: Sequence[Mapping[str, Any]] | None = ...,
        tool_choice: str | Mapping[str, Any] | None = ...,
        parallel_tool_calls: bool | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        grammar: str | None = ...,
        logprobs: int | None = ...,
        **sampling: Any,
    ) -> ChatStream: ...

    def chat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = None,
        *,
        stream: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: Mapping[str, Any] | None = None,
        grammar: str | None = None,
        logprobs: int | None = None,
        **sampling: Any,
    ) -> ChatResult | ChatStream:
        """Answer a prompt or a conversation, each turn's images before its text.

        ``images`` (paths, bytes, PIL images, numpy arrays, file objects, ``data:`` URIs,
        http(s) URLs) join the last user turn. Sampling options (``temperature``,
        ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``, ``presence_penalty``,
        ``frequency_penalty``, ``logit_bias``, ``seed``, ``max_tokens``, ``stop``: see
        :class:`~lfm2_edge.chat.sampling.Sampling`) override the model card's defaults
        for this call.

        ``tools`` (OpenAI function tools) are written into the system turn in LFM2's
        format; the model's calls come back as ``result.tool_calls``. ``tool_choice`` is
        ``"auto"`` (default), ``"none"``, ``"required"`` (a call of one of the tools, or
        several unless ``parallel_tool_calls`` is false) or ``{"type": "function",
        "function": {"name": ...}}`` (one call of that one); forced calls follow their
        function's JSON schema, by a grammar. ``response_format`` (``{"type":
        "json_object"}`` or ``{"type": "json_schema", "json_schema": {"schema": ...}}``)
        and ``grammar`` (GBNF) constrain the answer's shape.

        ``logprobs``: ``None`` (default) for none, else each generated token's
        log-probability and that many likeliest alternatives (``0``: none) in
        ``result.logprobs`` (and ``stream.logprobs`` as it goes).

        With ``stream=True`` the answer is a :class:`ChatStream` of text pieces (nothing
        runs before its first ``next()``); its ``result`` is set at the end.
        """
        call = self.check_call(
            prompt_or_messages,
            images,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            response_format=response_format,
            grammar=grammar,
            logprobs=logprobs,
            **sampling,
        )
        out = self._open(call, stream=stream)
        if stream:
            return out
        for _ in out:
            pass
        assert out.result is not None
        return out.result

    @overload
    def achat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = ...,
        *,
        stream: Literal[False] = ...,
        tools: Sequence[Mapping[str, Any]] | None = ...,
        tool_choice: str | Mapping[str, Any] | None = ...,
        parallel_tool_calls: bool | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        grammar: str | None = ...,
        logprobs: int | None = ...,
        **sampling: Any,
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
        parallel_tool_calls: bool | None = ...,
        response_format: Mapping[str, Any] | None = ...,
        grammar: str | None = ...,
        logprobs: int | None = ...,
        **sampling: Any,
    ) -> AsyncChatStream: ...

    def achat(
        self,
        prompt_or_messages: str | Sequence[MessageInput],
        images: ImagesArg | None = None,
        *,
        stream: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: str | Mapping[str, Any] | None = None,
        parallel_tool_calls: bool | None = None,
        response_format: Mapping[str, Any] | None = None,
        grammar: str | None = None,
        logprobs: int | None = None,
        **sampling: Any,
    ) -> Coroutine[Any, Any, ChatResult] | AsyncChatStream:
        """:meth:`chat` for asyncio: ``await model.achat(...)`` gives the
        :class:`~lfm2_edge.ChatResult`; ``model.achat(..., stream=True)`` (no ``await``)
        an :class:`~lfm2_edge.chat.aio.AsyncChatStream` to ``async for`` over. The
        arguments are :meth:`chat`'s, checked here, at the call."""
        call = self.check_call(
            prompt_or_messages,
            images,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            response_format=response_format,
            grammar=grammar,
            logprobs=logprobs,
            **sampling,
        )
        # streamed even for a whole answer: the worker checks for a stop between pieces
        out = AsyncChatStream(lambda: self._open(call, stream=True), self._achat_turn())
        return out if stream else drain(out)

    def _achat_turn(self) -> threading.Lock | None:
        if not self._serial:
            return None
        with _LOCKS_LOCK:
            lock: threading.Lock | None = self.__dict__.get("_achat_lock")
            if lock is None:
                lock = self.__dict__["_achat_lock"] = threading.Lock()
        return lock
