"""What a chat returns: :class:`ChatResult` (text, reasoning, usage, timings, tool calls)
and :class:`ChatStream`, an iterator of text pieces that ends with one.

Every model class (:class:`lfm2_edge.chat.contract.ChatModel`: local
:class:`lfm2_edge.VisionModel` / :class:`lfm2_edge.TextModel` and
:class:`lfm2_edge.RemoteModel`) returns these types, so an app can swap one for
another. A stream is driven by a generator that yields text pieces and *returns* the
:class:`ChatResult`; :class:`ChatStream` captures it, so nobody writes into a stream
from outside.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = [
    "ChatResult",
    "ChatStream",
    "FinishReason",
    "StreamClosed",
    "Thought",
    "Timings",
    "TokenLogprob",
    "ToolCall",
    "Usage",
]

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ToolCall:
    """One call, in the OpenAI shape: an id, a function name, JSON arguments."""

    name: str
    arguments: dict[str, Any]
    id: str = ""

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # positions in the prompt, image tokens included
    image_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt positions taken from a reused state, not evaluated
    image_encodes: int = 0  # image tiles the vision encoder ran on (not from its cache)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Wall-clock figures of one chat call, in milliseconds."""

    prompt_ms: float  # evaluating the prompt, images included
    image_ms: float  # of which: encoding and decoding image chunks
    first_token_ms: float  # from the call to the first generated token (waiting included)
    decode_ms: float  # generating the completion after the first token
    queue_ms: float = 0.0  # of first_token_ms: waiting for a free sequence or the model's load
    load_ms: float = 0.0  # of queue_ms: waiting for the model to load (``serve`` loads on demand)

    def prompt_tok_s(self, usage: Usage) -> float:
        return usage.prompt_tokens / (self.prompt_ms / 1000) if self.prompt_ms > 0 else 0.0

    def decode_tok_s(self, usage: Usage) -> float:
        n = usage.completion_tokens - 1
        return n / (self.decode_ms / 1000) if n > 0 and self.decode_ms > 0 else 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability (natural log), as OpenAI's ``logprobs``
    reports it: the model's own distribution at that position (the log-softmax of its raw
    logits, before logit biases, penalties, a grammar or the temperature, as vLLM
    reports by default), and the ``top_logprobs`` likeliest tokens there, best first.

    ``token`` is the token's text (invalid UTF-8 of a byte-level piece replaced by
    U+FFFD), ``bytes`` its exact bytes; ``top_bytes`` the exact bytes of each of
    ``top_logprobs``, in the same order (empty when not known, as from a remote server).
    """

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top_logprobs: tuple[tuple[str, float], ...] = ()
    top_bytes: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    tool_calls: tuple[ToolCall, ...] = ()  # the calls the model made, when tools were given
    logprobs: tuple[TokenLogprob, ...] | None = None  # per generated token, when asked for
    # a thinking model's <think> block (prompt/reasoning.py), never part of ``text``;
    # None: the model did not think ("" is an empty block)
    reasoning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the derived token rates."""
        data = asdict(self)
        data["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        data["usage"]["total_tokens"] = self.usage.total_tokens
        data["timings"]["prompt_tok_s"] = round(self.timings.prompt_tok_s(self.usage), 2)
        data["timings"]["decode_tok_s"] = round(self.timings.decode_tok_s(self.usage), 2)
        return data


class Thought(str):
    """A piece of a thinking model's reasoning, as a stream's ``steps`` yield it among the
    answer's pieces. :class:`ChatStream` never hands one out as a piece: it goes to
    :attr:`ChatStream.on_thought`, so the pieces still join to ``result.text``."""


class StreamClosed(Exception):
    """Thrown into a stream's generator by :meth:`ChatStream.close`: stop generating and
    return the result so far."""


class ChatStream:
    """An iterator of text pieces; :attr:`result` is set once it is exhausted or closed.

    ``steps`` is a generator that yields the pieces and returns the :class:`ChatResult`.
    With ``logprobs`` asked for, :attr:`logprobs` is a list that ``steps`` fills: one
    entry per token, those of a piece's tokens added before the piece is yielded (a
    piece may cover several tokens, a token held back may come with a later piece).

    A thinking model's reasoning comes as :class:`Thought` items of ``steps``, before the
    answer's pieces; set :attr:`on_thought` to see them as they come (the CLI draws them
    dimmed), else they are only in ``result.reasoning``.
    """

    on_thought: Callable[[str], None] | None = None

    def __init__(
        self, steps: Generator[str, None, ChatResult | None], logprobs: list[TokenLogprob] | None = None
    ) -> None:
        self._steps: Generator[str, None, ChatResult | None] | None = steps
        self.result: ChatResult | None = None
        self.logprobs = logprobs
        self._pass_thoughts = False

    def with_thoughts(self) -> ChatStream:
        """This stream, handing out its :class:`Thought` pieces too: for a stream that
        wraps another one (a session's) and passes the thoughts on to its own listener."""
        self._pass_thoughts = True
        return self

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._steps is None:
            raise StopIteration
        try:
            while True:
                piece = next(self._steps)
                if not isinstance(piece, Thought) or self._pass_thoughts:
                    return piece
                if self.on_thought is not None:
                    try:
                        self.on_thought(str(piece))
                    except BaseException:  # the listener stops it (Ctrl-C): stop generating first
                        self.close()
                        raise
        except StopIteration as done:
            self._finish(done.value)
            raise StopIteration from None
        except BaseException:
            self._steps = None
            raise

    def _finish(self, result: ChatResult | None) -> None:
        self.result = result
        self._steps = None

    def close(self) -> None:
        """Stop generating; :attr:`result` then holds the text and usage so far (the
        model stays usable). A stream closed before its first piece was asked for
        has no result (``None``)."""
        steps = self._steps
        if steps is None:
            return
        try:
            steps.throw(StreamClosed())
        except StopIteration as done:
            self._finish(done.value)
        except StreamClosed:  # the generator had not started, or did not catch it
            self._finish(None)
        except BaseException:  # it failed while stopping: the stream is over all the same
            self._steps = None
            raise
        else:  # it yielded again instead of stopping: end it the hard way
            steps.close()
            self._finish(None)

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A stream dropped half-way frees its model for the next call.
        if self._steps is not None:
            with contextlib.suppress(Exception):
                self._steps.close()
