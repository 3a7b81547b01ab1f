"""A chat as the engine evaluates it (:class:`PreparedChat`), and its answer's tokens
turned into text (:class:`Transcript`).

The transcript is where an answer's text is decided, once, for every front end: UTF-8
assembled across tokens, a leading ``<think>`` block split off as the reasoning
(:class:`~lfm2_edge.prompt.reasoning.ReasoningSplitter`, before anything else looks at
the text: stop strings and tool calls are the answer's, never the thought's), stop
strings cut, tool-call markup held back and parsed into
:class:`~lfm2_edge.chat.results.ToolCall`, each token's log-probabilities released with
the text it ends. What it releases are the thoughts and the pieces a stream shows; they
join to the result's ``reasoning`` and ``text``.
"""

from __future__ import annotations

import codecs
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from lfm2_edge.chat.images import LoadedImage
from lfm2_edge.chat.results import ChatResult, Timings, TokenLogprob, ToolCall, Usage
from lfm2_edge.chat.sampling import Sampling
from lfm2_edge.prompt.holdback import HoldBack
from lfm2_edge.prompt.reasoning import ReasoningSplitter
from lfm2_edge.prompt.tokens import TOOL_CALL_START, Prompt
from lfm2_edge.prompt.tools import ToolPlan, parse_answer

if TYPE_CHECKING:
    from lfm2_edge._llama.context import Runtime

__all__ = ["PreparedChat", "Transcript"]


@dataclass
class PreparedChat:
    """A chat request as the engine evaluates it: the rendered prompt, the loaded images,
    the sampling, the tool plan and the logprobs wanted (``VisionModel.prepare``)."""

    prompt: Prompt | str
    images: list[LoadedImage]
    params: Sampling
    plan: ToolPlan
    logprobs: int | None = None  # alternatives per token; None: no logprobs
    # the prompt ends inside a <think> block (prompt_opens_thinking): the answer starts as reasoning
    thinking_opened: bool = False


class Transcript:
    """One answer's sampled tokens, as the text a stream may show and, at the end, the
    :class:`ChatResult`."""

    def __init__(self, rt: Runtime, chat: PreparedChat) -> None:
        self.rt, self.chat = rt, chat
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # llama.cpp's LFM2 rule, for every answer: one that starts with <think> is reasoning first
        self.splitter = ReasoningSplitter(opened=chat.thinking_opened)
        mode = chat.plan.mode
        # in "auto" mode text from a call marker on may be a call; a forced call is all call
        self.scanner = HoldBack(
            stops=chat.params.stop, withhold=[TOOL_CALL_START] if mode == "auto" else [], hold_all=mode == "forced"
        )
        self.n_out = 0
        self.hit_stop = False
        self.shown_text: list[str] = []  # every piece handed out
        self.entries: list[TokenLogprob] = []  # per token, when logprobs were asked for
        # entries not released yet, each with the length of the decoded text up to its token's end
        self._pending: deque[tuple[int, TokenLogprob]] = deque()
        self._decoded = self._released = 0
        self._fed = 0  # answer text given to the scanner (what the splitter released as content)
        self._shown_chars = 0  # answer text handed out

    def take(self, token: int, logits: Any = None) -> tuple[str, str, tuple[TokenLogprob, ...]]:
        """What ``token`` makes safe to show (``logits``: the row it was sampled from,
        when not the context's last): reasoning, answer text and the entries of the
        tokens they complete; sets :attr:`hit_stop` at a stop string."""
        data = self.rt.token_bytes(token)
        text = self.decoder.decode(data)
        if self.chat.logprobs is not None:
            self._decoded += len(text)
            entry = _entry(self.rt, token, data, self.chat.logprobs, logits)
            self.entries.append(entry)
            self._pending.append((self._decoded, entry))
        self.n_out += 1
        thought, piece = self._scan(text)
        return thought, piece, self._shown(piece)

    def _scan(self, text: str, *, final: bool = False) -> tuple[str, str]:
        split = self.splitter.finish() if final else self.splitter.feed(text)
        self._fed += len(split.content)
        piece = ""
        if split.content:
            piece, self.hit_stop = self.scanner.feed(split.content)
        return split.reasoning, piece

    def _shown(self, piece: str) -> tuple[TokenLogprob, ...]:
        """``piece`` (and what the splitter settled) goes out: the entries of the tokens it completes."""
        if piece:
            self.shown_text.append(piece)
            self._shown_chars += len(piece)
        if not self._pending:
            return ()
        # the decoded text settled before the answer (the thought, its markers) and the answer shown
        self._released = self.splitter.consumed - self._fed + self._shown_chars
        out = []
        while self._pending and self._pending[0][0] <= self._released:
            out.append(self._pending.popleft()[1])
        return tuple(out)

    def finish(
        self, finish: Literal["stop", "length"], usage: Usage, timings: Timings
    ) -> tuple[str, str, tuple[TokenLogprob, ...], ChatResult]:
        """The answer's last thought and last piece (what was held back and turned out to
        be text), the entries still to release with them, and the :class:`ChatResult`."""
        scanner, mode = self.scanner, self.chat.plan.mode
        thought = tail = ""
        if not self.hit_stop:
            thought, tail = self._scan(self.decoder.decode(b"", final=True))
            if not self.hit_stop:
                more, piece = self._scan("", final=True)
                thought, tail = thought + more, tail + piece
            if not self.hit_stop:
                tail += scanner.finish()
        calls: tuple[ToolCall, ...] = ()
        if mode == "forced":
            calls = parse_answer(scanner.text, bare=True).tool_calls
            # a forced answer is a call: one cut by max_tokens is no text either, only finish "length"
            tail = "" if calls or finish == "length" else scanner.text
        elif mode == "auto" and scanner.withheld_at is not None:
            parsed = parse_answer(scanner.rest)
            calls = parsed.tool_calls
            tail += parsed.content if calls else scanner.rest
        if not self.chat.plan.parallel:
            calls = calls[:1]
        rest = tuple(entry for _, entry in self._pending)
        self._pending.clear()
        if tail:
            self.shown_text.append(tail)
        result = ChatResult(
            text="".join(self.shown_text),
            finish_reason="tool_calls" if calls else finish,
            tool_calls=calls,
            usage=usage,
            timings=timings,
            logprobs=tuple(self.entries) if self.chat.logprobs is not None else None,
            reasoning=self.splitter.reasoning,
        )
        return thought, tail, rest, result


def _entry(rt: Runtime, token: int, data: bytes, n_top: int, logits: Any) -> TokenLogprob:
    """``token``'s :class:`TokenLogprob`, from the logits it was sampled from (see
    :meth:`Runtime.logprobs`)."""
    logprob, top = rt.logprobs(token, n_top, logits)
    raw = [rt.token_bytes(t) for t, _ in top]
    alts = tuple((b.decode("utf-8", "replace"), lp) for b, (_, lp) in zip(raw, top, strict=True))
    return TokenLogprob(data.decode("utf-8", "replace"), logprob, tuple(data), alts, tuple(tuple(b) for b in raw))
