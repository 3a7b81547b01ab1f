"""What an answer being generated says as it goes: the typed events between the engine
(:mod:`lfm2_edge.local.engine`) and its front ends (a library stream, the OpenAI and
Ollama writers of ``serve``).

An answer is zero or more :class:`Reasoning` events (a thinking model's thought, all
before the first piece; only when it streams), then :class:`Logprobs` / :class:`Piece`
events (only when it streams), then exactly one of :class:`Done` (the :class:`ChatResult`, its tool calls
parsed once), :class:`Failed` or :class:`Cancelled`. A piece's (or a thought's) tokens'
log-probabilities come just before it. The pieces of a finished answer join to its ``result.text``: text
that turned out to be a tool call, a stop string or markup is never a piece.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from lfm2_edge.chat.results import ChatResult, TokenLogprob

__all__ = ["Cancelled", "Done", "Event", "Failed", "Logprobs", "Piece", "Reasoning", "Streamed"]


@dataclass(frozen=True)
class Piece:
    """Text safe to show now."""

    text: str


@dataclass(frozen=True)
class Reasoning:
    """Reasoning safe to show now: a thinking model's ``<think>`` block, apart from the
    answer (:mod:`lfm2_edge.prompt.reasoning`). It all comes before the first
    :class:`Piece`, and joins to the result's ``reasoning``; OpenAI's writer sends it as
    ``reasoning_content``, Ollama's as ``thinking``."""

    text: str


@dataclass(frozen=True)
class Logprobs:
    """The log-probabilities of the tokens the next piece completes."""

    entries: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class Done:
    """The answer is complete (or was stopped: then ``finish_reason`` is ``"stop"`` and the
    text is what was generated so far)."""

    result: ChatResult


@dataclass(frozen=True)
class Failed:
    """The answer failed; ``error`` is what to raise (a typed :class:`~lfm2_edge.errors.Lfm2EdgeError`
    for a user's mistake)."""

    error: BaseException


@dataclass(frozen=True)
class Cancelled:
    """The request was cancelled (its client went away); it has no result."""


Event = Union[Reasoning, Piece, Logprobs, Done, Failed, Cancelled]
# what a front end is handed (the server's admission raises a failure, and ends on a cancel)
Streamed = Union[Reasoning, Piece, Logprobs, Done]
END_EVENTS = (Done, Failed, Cancelled)
