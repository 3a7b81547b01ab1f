"""The answer loop of a local model, and the turn locking around it.

:class:`Turns` is who may use a model's context: one lock taken per llama.cpp step
(never across a ``yield``), the :class:`Run` whose conversation the context holds, and
the ``chat()`` without stream that other threads wait for. :func:`answer` is the
generator behind every :class:`~lfm2_edge.results.ChatStream` of a local model: it
evaluates the prompt, samples tokens, turns them into text and returns the
:class:`~lfm2_edge.results.ChatResult`. See :mod:`lfm2_edge.model` for the rules.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from lfm2_edge.errors import ModelClosedError
from lfm2_edge.holdback import HoldBack
from lfm2_edge.prefill import prefill
from lfm2_edge.results import ChatResult, StreamClosed, Timings, TokenLogprob, Usage
from lfm2_edge.sampling import Sampling
from lfm2_edge.tools import ToolCall, ToolPlan, parse_answer

if TYPE_CHECKING:
    from lfm2_edge._llama.context import Runtime
    from lfm2_edge.caches import StateCache

__all__ = ["PreparedChat", "Run", "Transcript", "Turns", "answer"]


class Run:
    """One chat's claim on its model's context, and the sampler chain it holds there."""

    __slots__ = ("stack",)

    def __init__(self) -> None:
        self.stack: ExitStack | None = None  # the sampler chain, while the run owns the context


class Turns:
    """One conversation at a time on a model: its lock, the run that owns the context
    (``owner``) and a ``chat()`` without stream in progress (``pinned``: others wait)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.closed = False
        self.owner: Run | None = None
        self.pinned: Run | None = None

    def check_open(self) -> None:
        if self.closed:
            raise ModelClosedError("the model has been closed; load it again to chat")

    def end(self, run: Run) -> None:
        """End ``run``'s hold on the context and free its sampler chain (lock held)."""
        stack, run.stack = run.stack, None
        if self.owner is run:
            self.owner = None
        if stack is not None:
            stack.close()

    def wait_turn(self, run: Run | None = None) -> None:
        """Wait until no other thread's ``chat()`` is pinned, then check the model is
        open (lock held)."""
        while self.pinned is not None and self.pinned is not run and not self.closed:
            self.cond.wait()
        self.check_open()

    def end_owner(self) -> None:
        """End an unfinished stream, if any (lock held)."""
        if self.owner is not None:
            self.end(self.owner)

    def close(self, free: Callable[[], None]) -> None:
        """Mark the model closed, end any stream and ``free`` llama.cpp's memory; once."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.end_owner()
            free()
            self.cond.notify_all()

    @contextmanager
    def pin(self, run: Run) -> Iterator[None]:
        """Hold the model for ``run`` (a ``chat()`` without stream) until the block ends."""
        with self.cond:  # wait for another thread's chat(); this thread runs no user code until done
            self.wait_turn()
            self.pinned = run
        try:
            yield
        finally:
            with self.cond:
                self.pinned = None
                self.cond.notify_all()


@dataclass
class PreparedChat:
    """A chat request as the model evaluates it: the rendered prompt, the loaded images,
    the sampling, the tool plan and the logprobs wanted (see ``_LocalModel.prepare``)."""

    prompt: str
    images: list[Any]
    params: Sampling
    plan: ToolPlan
    logprobs: int | None = None  # alternatives per token; None: no logprobs


class Transcript:
    """Sampled tokens turned into streamed text, and at the end into the
    :class:`ChatResult`: UTF-8 across tokens, stop strings held back, each token's
    logprobs released with the text it ends, tool calls parsed. One for every answer, in
    the single-sequence loop (:func:`answer`) and the batched one
    (:mod:`lfm2_edge.batching`) alike."""

    def __init__(self, rt: Runtime, chat: PreparedChat, sink: list[TokenLogprob] | None = None) -> None:
        self.rt, self.chat = rt, chat
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.scanner = HoldBack(stops=chat.params.stop)
        self.sink = sink if chat.logprobs is not None else None
        self.n_out = 0
        self.hit_stop = False
        # logprobs not released yet, each with the length of the text up to its token's end
        self._pending: deque[tuple[int, TokenLogprob]] = deque()
        self._decoded = self._released = 0

    def take(self, token: int, logits: Any = None) -> str:
        """The text ``token`` makes safe to show (``logits``: the row it was sampled
        from, when not the context's last); sets :attr:`hit_stop` at a stop string."""
        data = self.rt.token_bytes(token)
        text = self.decoder.decode(data)
        if self.sink is not None:
            self._decoded += len(text)
            self._pending.append((self._decoded, _entry(self.rt, token, data, self.chat.logprobs or 0, logits)))
        self.n_out += 1
        piece, self.hit_stop = self.scanner.feed(text)
        return piece

    def shown(self, piece: str) -> None:
        """``piece`` went out: its tokens' logprobs join the sink."""
        if self.sink is not None:
            self._released += len(piece)
            while self._pending and self._pending[0][0] <= self._released:
                self.sink.append(self._pending.popleft()[1])

    def tail(self) -> str:
        """The text held back until the end (none after a stop string)."""
        if self.hit_stop:
            return ""
        piece, _ = self.scanner.feed(self.decoder.decode(b"", final=True))
        return piece + self.scanner.finish()

    def result(self, finish: Literal["stop", "length"], usage: Usage, timings: Timings) -> ChatResult:
        if self.sink is not None:
            self.sink.extend(entry for _, entry in self._pending)
            self._pending.clear()
        text, calls = self.scanner.text, cast("tuple[ToolCall, ...]", ())
        plan = self.chat.plan
        if plan.mode is not None:
            parsed = parse_answer(text, bare=plan.mode == "forced")
            text, calls = (parsed.content, parsed.tool_calls) if parsed.tool_calls else (text, ())
            calls = calls if plan.parallel else calls[:1]
        return ChatResult(
            text=text,
            finish_reason="tool_calls" if calls else finish,
            tool_calls=calls,
            usage=usage,
            timings=timings,
            logprobs=tuple(self.sink) if self.sink is not None else None,
        )


def answer(
    turns: Turns,
    rt: Runtime,
    states: StateCache,
    run: Run,
    chat: PreparedChat,
    sink: list[TokenLogprob] | None = None,
    *,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Generator[str, None, ChatResult]:
    """Answer ``chat``: one step (the prompt, then each token) per lock hold.

    With ``chat.logprobs``, each token's :class:`TokenLogprob` goes into ``sink`` once
    the text it ends is yielded (all of them by the end); without, no per-token work is
    done for them.
    """
    t_start = time.perf_counter()
    params = chat.params
    with turns.cond:
        turns.wait_turn(run)
        turns.end_owner()  # an unfinished stream: it ends here
        turns.owner = run
        rt.on_progress = on_progress
        try:
            encodes_before = _encodes(rt)
            pre = prefill(rt, states, chat.prompt, chat.images)
            image_encodes = _encodes(rt) - encodes_before
            run.stack = ExitStack()
            sampler = run.stack.enter_context(rt.sampler(params, grammar=chat.plan.grammar))
        except BaseException:
            turns.end(run)
            raise
        first_logits = pre.resumed.logits if pre.resumed is not None else None
        tokens = rt.generate(sampler, max_tokens=params.max_tokens, first_logits=first_logits)
    t_prompt = time.perf_counter()
    out = Transcript(rt, chat, sink)
    finish: Literal["stop", "length"] = "stop"
    closed = ended = False
    t_first = t_prompt
    try:
        while True:
            with turns.lock:
                if turns.owner is not run:  # closed, or a newer chat took over
                    if turns.closed and turns.pinned is run:
                        raise ModelClosedError("the model was closed during the chat")
                    ended = True
                    break
                token = next(tokens, None)
                if token is None:  # ended by itself: an end token, max_tokens or the context's end
                    if out.n_out >= params.max_tokens or rt.n_past >= rt.n_ctx:
                        finish = "length"
                    if out.n_out == 0 and finish == "stop":  # the first token sampled was an end token
                        t_first = time.perf_counter()
                    break
                if out.n_out == 0:
                    t_first = time.perf_counter()
                # the first token's logits are the saved ones; later ones the context's
                piece = out.take(token, first_logits if out.n_out == 0 else None)
            if piece:
                out.shown(piece)
                try:
                    yield piece
                except StreamClosed:
                    closed = True
                    break
            if out.hit_stop:
                break
        with turns.lock:
            if turns.owner is run:
                turns.end(run)
    finally:
        # An error or a dropped stream (GeneratorExit, maybe from the garbage collector
        # in a thread that holds the lock): free the chain if the lock is free now, else
        # the next chat or close() does.
        if run.stack is not None and turns.lock.acquire(blocking=False):
            try:
                if turns.owner is run:
                    turns.end(run)
            finally:
                turns.lock.release()
    tail = out.tail()
    if tail and not closed and not ended:
        with suppress(StreamClosed):
            yield tail
    t_end = time.perf_counter()
    return out.result(
        finish,
        Usage(
            pre.n_prompt, pre.n_image_tokens, out.n_out, cached_tokens=pre.cached_tokens, image_encodes=image_encodes
        ),
        Timings(
            prompt_ms=(t_prompt - t_start) * 1000,
            image_ms=pre.image_s * 1000,
            first_token_ms=(t_first - t_start) * 1000,
            decode_ms=(t_end - t_first) * 1000,
        ),
    )


def _entry(rt: Runtime, token: int, data: bytes, n_top: int, logits: Any) -> TokenLogprob:
    """``token``'s :class:`TokenLogprob`, from the logits it was sampled from (see
    :meth:`Runtime.logprobs`)."""
    logprob, top = rt.logprobs(token, n_top, logits)
    alts = tuple((rt.token_bytes(t).decode("utf-8", "replace"), lp) for t, lp in top)
    return TokenLogprob(data.decode("utf-8", "replace"), logprob, tuple(data), alts)


def _encodes(rt: Runtime) -> int:
    projector = rt.projector
    return projector.encodes if projector else 0
