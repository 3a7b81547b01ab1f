"""A thinking model's ``<think>...</think>`` reasoning, apart from its answer.

LFM2.5-1.2B-Thinking and LFM2.5-8B-A1B open every answer with a reasoning block,
``<think>`` ... ``</think>``, then the answer. That block is not the answer: OpenAI's
shape (as vLLM's reasoning parsers and llama-server emit it) carries it in
``reasoning_content``, Ollama's in ``thinking``, the CLI shows it dimmed (or not, with
``--hide-thinking``); and a tool call is parsed from the answer only, never from the
reasoning (a model that thinks "I could call <|tool_call_start|>..." has not called
anything).

The rule, the one llama.cpp's LFM2 chat parser applies (``common/parsers/lfm2.cpp``,
an optional ``<think>`` ... ``</think>`` at the start of the generation):

* the answer is reasoning first when its text, after leading whitespace, starts with
  ``<think>``, or when the prompt itself opened the block (``opened=True``: a template
  whose generation prompt ends with ``<think>``);
* the reasoning runs to the first ``</think>``; an answer cut short before it (by
  ``max_tokens``, a stop, Ctrl-C) is all reasoning and has no content;
* the reasoning is stripped of surrounding whitespace, the content of leading whitespace
  (the newlines a model writes after ``</think>``);
* text that does not start with ``<think>`` has no reasoning, whatever it contains later:
  a ``<think>`` in the middle of an answer is the answer's text.

:func:`split_reasoning` splits a whole answer; :class:`ReasoningSplitter` does the same
for a stream, piece by piece, holding back only what could still be a marker (a
trailing ``<thi``) or whitespace that may turn out to be the reasoning's last, so that
the pieces it releases join to exactly what :func:`split_reasoning` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "THINK_END",
    "THINK_START",
    "Deltas",
    "Reasoned",
    "ReasoningSplitter",
    "prompt_opens_thinking",
    "split_reasoning",
    "template_thinks",
]

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass(frozen=True)
class Reasoned:
    """An answer split in two: ``reasoning`` (``None`` when the model did not think;
    ``""`` for an empty block) and ``content``, the answer itself."""

    reasoning: str | None
    content: str


def template_thinks(chat_template: str | None) -> bool:
    """Whether a model's chat template knows ``<think>`` blocks (either marker; llama.cpp's
    LFM2 parser looks for ``<think>`` before it reads reasoning). The LFM2.5 templates do
    (``keep_past_thinking``: a past turn's thought is dropped, the last one's kept), the
    Instruct and VL ones too, whose answers then simply never start with ``<think>``;
    the LFM2 ones do not."""
    return chat_template is not None and (THINK_START in chat_template or THINK_END in chat_template)


def prompt_opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt ends inside a ``<think>`` block (a template that writes
    ``<think>`` after the assistant header): then split with ``opened=True``. The LFM2.5
    templates end with ``<|im_start|>assistant\n`` and let the model write it."""
    tail = prompt.rstrip()
    return tail.endswith(THINK_START)


def split_reasoning(text: str, *, opened: bool = False) -> Reasoned:
    """Split a whole answer into its reasoning and its content (see the module's rule)."""
    if not opened:
        body = text.lstrip()
        if not body.startswith(THINK_START):
            return Reasoned(None, text)
        text = body[len(THINK_START) :]
    end = text.find(THINK_END)
    if end == -1:
        return Reasoned(text.strip(), "")
    return Reasoned(text[:end].strip(), text[end + len(THINK_END) :].lstrip())


@dataclass(frozen=True)
class Deltas:
    """What one :meth:`ReasoningSplitter.feed` releases: reasoning text, then content text
    (either may be empty; reasoning always comes before content)."""

    reasoning: str = ""
    content: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)


_START, _REASONING, _CONTENT, _PLAIN = "start", "reasoning", "content", "plain"


class ReasoningSplitter:
    """:func:`split_reasoning` for a stream: :meth:`feed` each piece, then :meth:`finish`.

    What it releases joins to the whole split: the reasoning deltas to its
    ``reasoning``, the content deltas to its ``content``. :attr:`reasoning` is the
    reasoning so far, ``None`` while it is not known (:attr:`decided`) or when the answer
    does not think; :attr:`content` the content so far.
    """

    def __init__(self, *, opened: bool = False) -> None:
        self._state = _REASONING if opened else _START
        self._buf = ""  # not released yet: what may be a marker, or whitespace held back
        self._lead = True  # no reasoning text yet: leading whitespace is dropped
        self._content_started = False  # no content text yet: leading whitespace is dropped
        self._fed = 0
        self.reasoning: str | None = "" if opened else None
        self.content = ""

    @property
    def consumed(self) -> int:
        """How many characters fed so far are settled: released, or dropped (the markers,
        the whitespace around the thought). The rest is held back; a caller that maps
        token positions to released text (log-probabilities) counts with this."""
        return self._fed - len(self._buf)

    @property
    def decided(self) -> bool:
        """Whether it is known yet if the answer starts with reasoning."""
        return self._state != _START

    @property
    def thinking(self) -> bool:
        """Whether the stream is inside the reasoning block now."""
        return self._state == _REASONING

    def feed(self, piece: str) -> Deltas:
        """Add ``piece``; returns the reasoning and the content that are safe to show now."""
        self._buf += piece
        self._fed += len(piece)
        if self._state == _START:
            body = self._buf.lstrip()
            if len(body) < len(THINK_START) and THINK_START.startswith(body):
                return Deltas()  # whitespace, or the start of "<think>": not known yet
            if body.startswith(THINK_START):
                self._state, self._buf, self.reasoning = _REASONING, body[len(THINK_START) :], ""
            else:
                self._state = _PLAIN
        reasoning = self._reasoning_step() if self._state == _REASONING else ""
        return Deltas(reasoning, self._content_step() if self._state in (_CONTENT, _PLAIN) else "")

    def finish(self) -> Deltas:
        """The rest, once the stream is over: a marker that never completed is text, and
        an answer cut short inside its block is all reasoning."""
        rest, self._buf = self._buf, ""
        if self._state == _REASONING:
            tail = (rest.lstrip() if self._lead else rest).rstrip()
            self.reasoning = (self.reasoning or "") + tail
            return Deltas(reasoning=tail)
        if self._state == _START:
            self._state = _PLAIN
        if self._state == _CONTENT and not self._content_started:
            rest = rest.lstrip()
        self.content += rest
        return Deltas(content=rest)

    def _reasoning_step(self) -> str:
        if self._lead:
            self._buf = self._buf.lstrip()
        end = self._buf.find(THINK_END)
        if end != -1:
            text = self._buf[:end].rstrip()  # the block's trailing whitespace is dropped
            self._state, self._buf = _CONTENT, self._buf[end + len(THINK_END) :]
        else:
            # hold back what may begin "</think>", and trailing whitespace that may be the block's last
            keep = _marker_prefix_len(self._buf, THINK_END)
            text = self._buf[: len(self._buf) - keep].rstrip()
            self._buf = self._buf[len(text) :]
        if text:
            self._lead = False
        self.reasoning = (self.reasoning or "") + text
        return text

    def _content_step(self) -> str:
        if self._state == _CONTENT and not self._content_started:
            self._buf = self._buf.lstrip()  # the newlines after "</think>"
            if not self._buf:
                return ""
        self._content_started = True
        text, self._buf = self._buf, ""
        self.content += text
        return text


def _marker_prefix_len(text: str, marker: str) -> int:
    """How many characters at the end of ``text`` could begin ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
