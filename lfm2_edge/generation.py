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
from typing import TYPE_CHECKING, Any, Literal, cast

from lfm2_edge.errors import ModelClosedError
from lfm2_edge.holdback import HoldBack
from lfm2_edge.prefill import prefill
from lfm2_edge.results import ChatResult, StreamClosed, Timings, TokenLogprob, Usage
from lfm2_edge.sampling import Sampling
from lfm2_edge.tools import ToolCall, parse_answer

if TYPE_CHECKING:
    from lfm2_edge._llama.context import Runtime
    from lfm2_edge.caches import StateCache

__all__ = ["Run", "Turns", "answer"]


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


def answer(
    turns: Turns,
    rt: Runtime,
    states: StateCache,
    run: Run,
    prompt: str,
    images: list[Any],
    params: Sampling,
    grammar: str | None = None,
    tools_mode: Literal["auto", "forced"] | None = None,
    *,
    parallel_tool_calls: bool = True,
    logprobs: int | None = None,
    sink: list[TokenLogprob] | None = None,
) -> Generator[str, None, ChatResult]:
    """Answer ``prompt``: one step (the prompt, then each token) per lock hold.

    With ``logprobs`` (the number of alternatives per token, 0 for none), each token's
    :class:`TokenLogprob` goes into ``sink`` once the text it ends is yielded (all of them
    by the end); without, no per-token work is done for them.
    """
    t_start = time.perf_counter()
    with turns.cond:
        turns.wait_turn(run)
        turns.end_owner()  # an unfinished stream: it ends here
        turns.owner = run
        try:
            encodes_before = _encodes(rt)
            pre = prefill(rt, states, prompt, images)
            image_encodes = _encodes(rt) - encodes_before
            run.stack = ExitStack()
            chain = run.stack.enter_context(rt.sampler(params, grammar=grammar))
        except BaseException:
            turns.end(run)
            raise
        first_logits = pre.resumed.logits if pre.resumed is not None else None
        tokens = rt.generate(chain, max_tokens=params.max_tokens, first_logits=first_logits)
    t_prompt = time.perf_counter()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    scanner = HoldBack(stops=params.stop)
    n_out = 0
    finish: Literal["stop", "length"] = "stop"
    hit_stop_string = closed = ended = False
    t_first = t_prompt
    # logprobs: entries not yet released, each with the length of the text up to its token's end
    pending: deque[tuple[int, TokenLogprob]] = deque()
    decoded = released = 0
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
                    if n_out >= params.max_tokens or rt.n_past >= rt.n_ctx:
                        finish = "length"
                    if n_out == 0 and finish == "stop":  # the first token sampled was an end token
                        t_first = time.perf_counter()
                    break
                if n_out == 0:
                    t_first = time.perf_counter()
                data = rt.token_bytes(token)
                text = decoder.decode(data)
                if sink is not None:
                    decoded += len(text)
                    logits = first_logits if n_out == 0 else None  # else the context's, not yet moved on
                    pending.append((decoded, _entry(rt, token, data, logprobs or 0, logits)))
                n_out += 1
                piece, hit_stop_string = scanner.feed(text)
            if piece:
                if sink is not None:
                    released += len(piece)
                    while pending and pending[0][0] <= released:
                        sink.append(pending.popleft()[1])
                try:
                    yield piece
                except StreamClosed:
                    closed = True
                    break
            if hit_stop_string:
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
    if not hit_stop_string:
        piece, _ = scanner.feed(decoder.decode(b"", final=True))
        tail = piece + scanner.finish()
        if tail and not closed and not ended:
            with suppress(StreamClosed):
                yield tail
    t_end = time.perf_counter()
    if sink is not None:
        sink.extend(entry for _, entry in pending)
    text, calls = scanner.text, cast("tuple[ToolCall, ...]", ())
    if tools_mode is not None:
        parsed = parse_answer(text, bare=tools_mode == "forced")
        text, calls = (parsed.content, parsed.tool_calls) if parsed.tool_calls else (text, ())
        calls = calls if parallel_tool_calls else calls[:1]
    return ChatResult(
        text=text,
        finish_reason="tool_calls" if calls else finish,
        tool_calls=calls,
        usage=Usage(
            pre.n_prompt,
            pre.n_image_tokens,
            n_out,
            cached_tokens=pre.cached_tokens,
            image_encodes=image_encodes,
        ),
        timings=Timings(
            prompt_ms=(t_prompt - t_start) * 1000,
            image_ms=pre.image_s * 1000,
            first_token_ms=(t_first - t_start) * 1000,
            decode_ms=(t_end - t_first) * 1000,
        ),
        logprobs=tuple(sink) if sink is not None else None,
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
