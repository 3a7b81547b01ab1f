"""The engine: one thread that runs every chat of one model on its llama.cpp context.

There is one engine per local model, and every front end posts to it: a library
``chat()`` / stream / ``ChatSession`` / the REPL (a :class:`Job` at a time, on a
context of one sequence) and ``serve`` (as many jobs at once as ``--slots`` gave the
context sequences), as ``llama-cli`` posts to llama-server's own context.

Each admitted :class:`Job` gets a free sequence; its prompt is evaluated in units (text
pieces, one image each: see :mod:`lfm2_edge._llama.batch`) between decode steps, and
every step decodes one token for every generating sequence in a single
``llama_decode``, so the weights are read once per step for everyone. Sampling, stop
strings, tool calls and grammars stay per job (each has its own
:class:`~lfm2_edge._llama.sampler.Sampler` and :class:`Transcript`).

A job hears of its answer through typed events (:mod:`lfm2_edge.chat.events`): thoughts
and pieces (only when it streams), then one :class:`Done`, :class:`Failed` or :class:`Cancelled`.
:meth:`Job.stop` ends it with its partial result (a library stream closed, or ended by
a newer chat); :attr:`Job.cancel` ends it without one (its client went away).

State reuse: a job loads the longest saved prefix of its prompt (the model's shared
:class:`StateCache`) into its own sequence and saves states at the save points of
:class:`~lfm2_edge._llama.cuts.PromptCuts`, where its units are cut: a state continues
bit for bit as a fresh context would.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from lfm2_edge._llama.batch import Sequences, Unit, plan_units
from lfm2_edge._llama.caches import Item, StateCache
from lfm2_edge._llama.context import Runtime
from lfm2_edge._llama.projector import PromptChunks
from lfm2_edge._llama.sampler import Sampler
from lfm2_edge._llama.state import SavedState
from lfm2_edge.chat.events import Cancelled, Done, Event, Failed, Logprobs, Piece, Reasoning
from lfm2_edge.chat.results import Timings, Usage
from lfm2_edge.errors import ContextOverflowError, ModelClosedError
from lfm2_edge.local.transcript import PreparedChat, Transcript

__all__ = ["Engine", "Job", "restore_prefix"]

#: ``on_progress(stage, done, total)``: ``("image", i, n)`` before tile i of n is
#: encoded, ``("prefill", i, n)`` before a batch of prompt tokens; raising from it
#: stops the job there (Ctrl-C between tiles).
Progress = Callable[[str, int, int], None]
_T = TypeVar("_T")


def restore_prefix(
    states: StateCache,
    items: Sequence[Item],
    load: Callable[[SavedState], bool],
    clear: Callable[[], None],
) -> tuple[int, SavedState | None]:
    """Load (with ``load(state)``) the saved state that covers the longest part of
    ``items``; ``clear()`` when none does or it is refused.

    Returns how many leading items the sequence now holds (0: it was cleared) and, when
    that is all of them, the state whose saved logits the first token is sampled from.
    """
    saved = states.longest_prefix_of(items)
    if saved is not None:
        key, state = saved
        if load(state):
            return len(key), (state if len(key) == len(items) else None)
    clear()
    return 0, None


@dataclass(eq=False)
class Job:
    """One chat inside an engine, and how it hears of its answer."""

    chat: PreparedChat
    on_event: Callable[[Event], None]  # called from the engine's thread
    stream: bool = True  # False: no Piece or Logprobs events, only the end (less work a token)
    limit: int | None = None  # max_tokens as the request gave it: prompt + limit must fit
    on_progress: Progress | None = None
    cancel: threading.Event = field(default_factory=threading.Event)  # end without a result
    # -- the engine's side
    stopping: threading.Event = field(default_factory=threading.Event)  # end with the result so far
    seq: int = -1
    pos: int = 0
    phase: Literal["waiting", "prefill", "decode", "done"] = "waiting"
    chunks: PromptChunks | None = None
    items: list[Item] = field(default_factory=list)
    units: deque[Unit] = field(default_factory=deque)
    save_points: set[int] = field(default_factory=set)
    pending: int = -1  # the sampled token to decode at the next step
    sampler: Sampler | None = None
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    n_prompt: int = 0
    n_image_tokens: int = 0
    cached_tokens: int = 0
    image_s: float = 0.0
    encodes: int = 0
    tiles: tuple[int, int] = (0, 0)  # image units evaluated, in all
    texts: tuple[int, int] = (0, 0)  # prompt text tokens evaluated, in all
    t_submit: float = 0.0
    t_admit: float = 0.0
    t_prompt: float = 0.0
    t_first: float = 0.0
    out: Transcript | None = None  # the answer so far

    def stop(self) -> None:
        """End the answer at the next step, with the text so far (``finish_reason`` "stop")."""
        self.stopping.set()


class Engine:
    """Runs the jobs of one model's context from its own thread.

    ``lock`` is held for each step (admission, a decode step, a batch of prompt units):
    whoever else touches the context or the saved states (``reset()``) takes it.
    """

    def __init__(self, rt: Runtime, states: StateCache, *, step_tokens: int | None = None) -> None:
        self.rt = rt
        self.states = states
        self.seqs = Sequences(rt)
        self.n_slots = self.seqs.n_seq
        # prompt tokens evaluated between two decode steps (at least one unit)
        self.step_tokens = step_tokens or rt.n_batch
        self.lock = threading.Lock()
        self._free = list(range(self.n_slots))
        self._waiting: deque[Job] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._active: list[Job] = []
        self._cv = threading.Condition()
        self._closing: Literal["", "drain", "now"] = ""
        self.steps = 0  # decode steps, for tests and /health
        self.max_batch = 0  # the most sequences decoded in one step
        self._thread = threading.Thread(target=self._loop, name="lfm2-edge-engine", daemon=True)
        self._thread.start()

    # -- the public side -----------------------------------------------------------

    @property
    def busy(self) -> int:
        return self.n_slots - len(self._free)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def load(self) -> int:
        return len(self._active) + len(self._waiting)

    @property
    def closed(self) -> bool:
        return bool(self._closing)

    def submit(self, job: Job) -> None:
        job.t_submit = time.perf_counter()
        with self._cv:
            if self._closing:
                job.on_event(Failed(ModelClosedError("the model has been closed; load it again to chat")))
                return
            self._waiting.append(job)
            self._cv.notify()

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the engine's thread between two steps, under :attr:`lock`, and
        return what it returns (``bench`` measures its bare loop there: the same
        context, from the same thread as the engine's own decoding)."""
        future: Future[_T] = Future()
        with self._cv:
            if self._closing:
                raise ModelClosedError("the model has been closed; load it again to chat")
            self._calls.append((fn, future))
            self._cv.notify()
        return future.result()

    def close(self, *, drain: bool = False) -> None:
        """Stop the thread. Jobs waiting for a sequence fail (:class:`ModelClosedError`;
        with ``drain``, they are cancelled); with ``drain`` the jobs holding one finish
        their answers, without it they end at the next step: a streamed one with its
        partial result, a whole one with :class:`ModelClosedError`. Safe to call twice."""
        with self._cv:
            if not self._closing:
                self._closing = "drain" if drain else "now"
            self._cv.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()
            self.seqs.close()

    # -- the thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closing and not self._waiting and not self._active and not self._calls:
                    self._cv.wait()
                calls = list(self._calls)
                self._calls.clear()
                for job in [j for j in self._waiting if j.cancel.is_set() or j.stopping.is_set()]:
                    self._waiting.remove(job)  # their clients left before they had a sequence
                    job.on_event(Cancelled())
                if self._closing:
                    while self._waiting:
                        job = self._waiting.popleft()
                        closed = ModelClosedError("the model was closed before the chat started")
                        job.on_event(Cancelled() if self._closing == "drain" else Failed(closed))
                    if self._closing == "now":
                        for job in self._active:
                            job.stopping.set()
                    if not self._active:
                        return
                admit = []
                while self._waiting and self._free:
                    job = self._waiting.popleft()
                    job.seq = self._free.pop(0)
                    admit.append(job)
            with self.lock:
                for fn, future in calls:
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # the caller's, raised there
                        future.set_exception(exc)
                for job in admit:
                    self._active.append(job)
                    self._guard(job, self._start)
                self._step()

    def _guard(self, job: Job, fn: Callable[[Job], None]) -> None:
        try:
            fn(job)
        except BaseException as exc:
            self._finish(job, error=exc)

    def _step(self) -> None:
        for job in list(self._active):
            if job.cancel.is_set():
                self._finish(job, cancelled=True)
            elif job.stopping.is_set():
                if self._closing == "now" and not job.stream:
                    self._finish(job, error=ModelClosedError("the model was closed during the chat"))
                else:
                    self._finish(job)
        # in sequence order: llama.cpp splits a hybrid model's batch into one micro-batch
        # per run of consecutive sequence ids (4 sequences out of order cost 1.4x in order)
        decoding = sorted((j for j in self._active if j.phase == "decode"), key=lambda j: j.seq)
        if decoding:
            try:
                self.seqs.decode_step([(j.seq, j.pos, j.pending) for j in decoding])
            except BaseException as exc:
                for job in decoding:
                    self._finish(job, error=exc)
                decoding = []
            self.steps += 1
            self.max_batch = max(self.max_batch, len(decoding))
            for row, job in enumerate(decoding):
                job.pos += 1
                self._guard(job, functools.partial(self._take_row, row=row))
        budget = self.step_tokens
        for job in [j for j in self._active if j.phase == "prefill"]:
            while job.phase == "prefill" and budget > 0 and not (job.cancel.is_set() or job.stopping.is_set()):
                budget -= job.units[0].n_pos
                self._guard(job, self._prefill_unit)
            if budget <= 0:
                break

    # -- one job -------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        """Tokenize the prompt, check it fits, load the longest saved prefix into the
        job's sequence, and plan the rest."""
        rt, chat = self.rt, job.chat
        job.t_admit = time.perf_counter()
        job.chunks = job.stack.enter_context(rt.tokenize_prompt(chat.prompt, chat.images))
        items = job.items = rt.prompt_items(job.chunks, [im.digest for im in chat.images])
        job.n_prompt, job.n_image_tokens = job.chunks.n_pos, job.chunks.n_image_tokens
        self._check_fits(job)
        job.sampler = job.stack.enter_context(rt.sampler(chat.params, grammar=chat.plan.grammar, items=items))
        job.out = Transcript(rt, chat)
        start, resumed = restore_prefix(
            self.states, items, lambda state: self.seqs.load(state, job.seq), lambda: self.seqs.clear(job.seq)
        )
        job.pos = job.cached_tokens = rt.positions(items[:start])
        cuts = {p for p in rt.cuts.save_points(items) if p > start}
        job.save_points = cuts if self.states.max_bytes else set()
        for a, b in itertools.pairwise(sorted({start, len(items), *cuts})):
            job.units.extend(plan_units(rt, job.chunks, items, a, b))
        if resumed is not None and resumed.logits is not None:  # the whole prompt, with its logits
            job.t_prompt = time.perf_counter()
            job.phase = "decode"
            self._take(job, job.sampler.sample_saved(resumed.logits), resumed.logits)
            return
        if not job.units:  # a state without logits covered everything: evaluate it all again
            self.seqs.clear(job.seq)
            job.pos = job.cached_tokens = 0
            job.units.extend(plan_units(rt, job.chunks, items, 0, len(items)))
        job.tiles = (0, sum(1 for u in job.units if u.chunk >= 0))
        job.texts = (0, sum(len(u.tokens) for u in job.units))
        job.phase = "prefill"

    def _check_fits(self, job: Job) -> None:
        """Refuse a prompt that leaves no room to answer, before anything is evaluated."""
        rt, n_images = self.rt, len(job.chat.images)
        room = rt.n_ctx_seq
        holds = f"the context holds {room}" + (" per slot" if rt.n_seq_max > 1 else "")
        flag = "--ctx" + (" (or fewer --slots)" if rt.n_seq_max > 1 else "")
        if job.n_prompt >= room:
            detail = f" ({job.n_image_tokens} of them for {n_images} image(s))" if n_images else ""
            fix = f"raise {flag} above {job.n_prompt}" + (
                " or send smaller images (above 512x512 an image is cut into 512x512 tiles of up to 256 tokens each)"
                if n_images
                else " or shorten the prompt"
            )
            raise ContextOverflowError(
                f"the prompt needs {job.n_prompt} tokens{detail} but {holds}; {fix}",
                prompt_tokens=job.n_prompt,
                context_tokens=room,
            )
        if job.limit is not None and job.n_prompt + job.limit > room:
            raise ContextOverflowError(
                f"the prompt needs {job.n_prompt} tokens and the answer may take {job.limit}, but {holds}; "
                f"lower max_tokens or raise {flag}",
                prompt_tokens=job.n_prompt,
                context_tokens=room,
            )

    def _prefill_unit(self, job: Job) -> None:
        assert job.chunks is not None and job.sampler is not None
        unit = job.units.popleft()
        if job.on_progress is not None:
            if unit.chunk >= 0:
                job.on_progress("image", *job.tiles)
            else:
                job.on_progress("prefill", *job.texts)
        projector = self.rt.projector
        before = projector.encodes if projector is not None else 0
        job.pos, image_s = self.seqs.eval_unit(job.chunks, job.items, unit, job.seq, job.pos)
        job.image_s += image_s
        job.encodes += (projector.encodes if projector is not None else 0) - before
        if unit.chunk >= 0:
            job.tiles = (job.tiles[0] + 1, job.tiles[1])
        else:
            job.texts = (job.texts[0] + len(unit.tokens), job.texts[1])
        if unit.end in job.save_points:
            state = self.seqs.save(job.seq, with_logits=unit.end == len(job.items))
            self.states.put(tuple(job.items[: unit.end]), state, state.nbytes)
        if not job.units:
            job.t_prompt = time.perf_counter()
            job.phase = "decode"
            self._take(job, job.sampler.sample(self.rt.ctx))

    def _take_row(self, job: Job, *, row: int) -> None:
        assert job.sampler is not None
        logits = self.seqs.row_logits(row) if job.chat.logprobs is not None else None
        self._take(job, job.sampler.sample(self.rt.ctx, row), logits)

    def _take(self, job: Job, token: int, logits: Any = None) -> None:
        """A token sampled for ``job`` (from ``logits``, when they are not the context's
        last row): stream its text, and finish or queue it for decoding."""
        rt, out = self.rt, job.out
        assert out is not None
        if out.n_out == 0:
            job.t_first = time.perf_counter()
        if rt.is_end(token):
            self._finish(job)
            return
        self._send(job, *out.take(token, logits))
        if out.hit_stop:
            self._finish(job)
        elif out.n_out >= job.chat.params.max_tokens or job.pos + 1 >= rt.n_ctx_seq:
            self._finish(job, finish="length")
        else:
            job.pending = token

    @staticmethod
    def _send(job: Job, thought: str, piece: str, entries: tuple[Any, ...]) -> None:
        """Send ``thought`` and ``piece``, after the logprobs of the tokens they complete (when asked for)."""
        if not job.stream:
            return
        if entries:
            job.on_event(Logprobs(entries))
        if thought:
            job.on_event(Reasoning(thought))
        if piece:
            job.on_event(Piece(piece))

    def _finish(
        self,
        job: Job,
        *,
        finish: Literal["stop", "length"] = "stop",
        cancelled: bool = False,
        error: BaseException | None = None,
    ) -> None:
        if job.phase == "done":
            return
        stopped = job.stopping.is_set()
        job.phase = "done"
        event: Event = Cancelled()
        try:
            if error is not None:
                event = Failed(error)
            elif not cancelled:
                event = self._done(job, finish, stopped)
        except BaseException as exc:
            event = Failed(exc)
        finally:
            with contextlib.suppress(Exception):
                job.stack.close()
            with contextlib.suppress(Exception):
                self.seqs.clear(job.seq)
            if job in self._active:
                self._active.remove(job)
            with self._cv:
                if job.seq >= 0:
                    self._free.append(job.seq)
                    self._free.sort()
        job.on_event(event)  # the sequence is free before the job hears of its end

    def _done(self, job: Job, finish: Literal["stop", "length"], stopped: bool) -> Done:
        out = job.out
        if out is None:  # stopped before its prompt was read: nothing generated
            out = Transcript(self.rt, job.chat)
        t_end = time.perf_counter()
        if out.n_out == 0:
            job.t_first = t_end
        t_admit = job.t_admit or t_end
        thought, tail, rest, result = out.finish(
            finish,
            Usage(
                job.n_prompt, job.n_image_tokens, out.n_out, cached_tokens=job.cached_tokens, image_encodes=job.encodes
            ),
            Timings(
                prompt_ms=((job.t_prompt or t_end) - t_admit) * 1000,
                image_ms=job.image_s * 1000,
                first_token_ms=(job.t_first - job.t_submit) * 1000,
                decode_ms=(t_end - job.t_first) * 1000,
                queue_ms=(t_admit - job.t_submit) * 1000,
            ),
        )
        if not stopped:  # whoever stopped it takes no more pieces
            self._send(job, thought, tail, rest)
        return Done(result)
