"""The batched engine: one model, one llama.cpp context, many conversations at once.

A :class:`Scheduler` owns a model whose runtime was made with ``n_seq_max`` slots
(``VisionModel(..., n_seq_max=N)``). Each admitted request gets a free sequence; its
prompt is evaluated in units (text pieces, one image each: see
:mod:`lfm2_edge._llama.batch`) between decode steps, and every step decodes one token for
every generating sequence in a single ``llama_decode``, so the weights are read once per
step for everyone. Sampling, stop strings, tool calls and grammars stay per request
(each has its own :class:`~lfm2_edge._llama.sampler.Sampler` and :class:`HoldBack`); a
cancelled request frees its sequence at the next step.

State reuse works as in :mod:`lfm2_edge.prefill`: the model's :class:`StateCache` is
shared by all sequences; a request loads the longest saved prefix into its own sequence
(``llama_state_seq_set_data``), and saves states at the same points.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lfm2_edge._llama.batch import Sequences, Unit, plan_units
from lfm2_edge._llama.projector import PromptChunks
from lfm2_edge._llama.sampler import Sampler
from lfm2_edge.caches import Item
from lfm2_edge.errors import ContextOverflowError
from lfm2_edge.generation import PreparedChat, Transcript
from lfm2_edge.prefill import restore_prefix
from lfm2_edge.results import ChatResult, Timings, TokenLogprob, Usage

__all__ = ["Job", "Scheduler", "default_slots"]


def default_slots(n_cores: int | None = None, available_bytes: int | None = None) -> int:
    """``serve``'s default ``--slots``: two sequences per physical core (a CPU decode step
    reads the weights once for the whole batch, so more sequences keep the cores busy
    until compute, not memory bandwidth, is the limit), between 2 and 8, and at most one
    per 256 MiB of available memory (a slot's KV stream, conv state and saved states)."""
    import os

    from lfm2_edge._llama.ggml import default_threads

    cores = n_cores or default_threads()
    if available_bytes is None:
        try:
            available_bytes = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available_bytes = 2**31
    return max(1, min(8, max(2, 2 * cores), available_bytes // 2**28))


# ("piece", text) / ("logprobs", entries) / ("done", ChatResult) / ("error", exc) / ("cancelled", None)
Emit = Callable[[str, Any], None]


@dataclass(eq=False)
class Job:
    """One request inside a scheduler."""

    chat: PreparedChat
    emit: Emit
    cancel: threading.Event = field(default_factory=threading.Event)
    limit: int | None = None  # max_tokens as the request gave it: prompt + limit must fit
    stream: bool = True  # False: no "piece" or "logprobs" events, only the end (less work a token)
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
    t_start: float = 0.0
    t_prompt: float = 0.0
    t_first: float = 0.0
    out: Transcript | None = None  # the answer so far
    logprobs: list[TokenLogprob] = field(default_factory=list)


class Scheduler:
    """Runs requests on one model's sequences, from its own thread."""

    def __init__(self, model: Any, *, step_tokens: int | None = None) -> None:
        self.model = model
        self.rt = model._runtime
        self.seqs = Sequences(self.rt)
        self.n_slots = self.seqs.n_seq
        # prompt tokens evaluated between two decode steps (at least one unit)
        self.step_tokens = step_tokens or self.rt.n_batch
        self._free = list(range(self.n_slots))
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._cv = threading.Condition()
        self._stop = False
        self.steps = 0  # decode steps, for tests and /health
        self.max_batch = 0  # the most sequences decoded in one step
        self._thread = threading.Thread(target=self._loop, name="lfm2-edge-batch", daemon=True)
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

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stop:
                job.emit("cancelled", None)
                return
            self._waiting.append(job)
            self._cv.notify()

    def shutdown(self) -> None:
        """Finish the requests holding a sequence, cancel those waiting, stop the thread."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join()
        self.seqs.close()

    # -- the thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._active:
                    self._cv.wait()
                for job in [j for j in self._waiting if j.cancel.is_set()]:  # their clients left
                    self._waiting.remove(job)
                    job.emit("cancelled", None)
                if self._stop:
                    while self._waiting:
                        self._waiting.popleft().emit("cancelled", None)
                    if not self._active:
                        return
                admit = []
                while self._waiting and self._free:
                    job = self._waiting.popleft()
                    if job.cancel.is_set():
                        job.emit("cancelled", None)
                        continue
                    job.seq = self._free.pop(0)
                    admit.append(job)
            with self.model.step_lock:
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
            if job.cancel.is_set() and job.phase != "done":
                self._finish(job, cancelled=True)
        # in sequence order: llama.cpp splits a hybrid model's batch into one micro-batch
        # per run of consecutive sequence ids (4 sequences out of order cost 1.4x in order)
        decoding = sorted((j for j in self._active if j.phase == "decode"), key=lambda j: j.seq)
        if decoding:
            entries = [(j.seq, j.pos, j.pending) for j in decoding]
            try:
                self.seqs.decode_step(entries)
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
            while job.phase == "prefill" and budget > 0 and not job.cancel.is_set():
                unit = job.units[0]
                budget -= unit.n_pos
                self._guard(job, self._prefill_unit)
            if budget <= 0:
                break

    # -- one request -----------------------------------------------------------------

    def _start(self, job: Job) -> None:
        """Tokenize the prompt, load the longest saved prefix into the job's sequence,
        and plan the rest."""
        rt, chat = self.rt, job.chat
        job.t_start = time.perf_counter()
        job.chunks = rt.tokenize_prompt(chat.prompt, chat.images)
        job.stack.enter_context(job.chunks)
        items = job.items = rt.prompt_items(job.chunks, [im.digest for im in chat.images])
        job.n_prompt, job.n_image_tokens = job.chunks.n_pos, job.chunks.n_image_tokens
        if job.n_prompt >= rt.n_ctx_seq:
            detail = f" ({job.n_image_tokens} of them for {len(chat.images)} image(s))" if chat.images else ""
            fix = "raise --ctx" + (" or lower --max-image-tokens" if chat.images else " or shorten the prompt")
            raise ContextOverflowError(
                f"the prompt needs {job.n_prompt} tokens{detail} but the context holds {rt.n_ctx_seq} per slot; {fix}",
                prompt_tokens=job.n_prompt,
                context_tokens=rt.n_ctx_seq,
            )
        if job.limit is not None and job.n_prompt + job.limit > rt.n_ctx_seq:
            raise ContextOverflowError(
                f"the prompt needs {job.n_prompt} tokens and the answer may take {job.limit}, but the context "
                f"holds {rt.n_ctx_seq} per slot; lower max_tokens or raise --ctx",
                prompt_tokens=job.n_prompt,
                context_tokens=rt.n_ctx_seq,
            )
        job.sampler = job.stack.enter_context(rt.sampler(chat.params, grammar=chat.plan.grammar))
        job.out = Transcript(rt, chat, job.logprobs)
        states = self.model._states
        start, resumed = restore_prefix(
            states, items, lambda _, state: self.seqs.load(state, job.seq), lambda: self.seqs.clear(job.seq)
        )
        job.pos = rt.positions(items[:start])
        job.cached_tokens = job.pos
        cuts = {p for p in rt.cuts.save_points(items) if p > start}  # the single-sequence path cuts there too
        job.save_points = cuts if states.max_bytes else set()
        points = sorted({start, len(items), *cuts})
        for a, b in itertools.pairwise(points):
            job.units.extend(plan_units(rt, job.chunks, items, a, b))
        if resumed is not None and resumed.logits is not None:
            job.t_prompt = time.perf_counter()
            job.phase = "decode"
            assert job.sampler is not None
            self._take(job, job.sampler.sample_saved(resumed.logits), resumed.logits)
        elif not job.units:  # a state without logits covered everything: evaluate its last item again
            self.seqs.clear(job.seq)
            job.pos = job.cached_tokens = 0
            job.units.extend(plan_units(rt, job.chunks, items, 0, len(items)))
            job.phase = "prefill"
        else:
            job.phase = "prefill"

    def _prefill_unit(self, job: Job) -> None:
        assert job.chunks is not None
        unit = job.units.popleft()
        projector = self.rt.projector
        before = projector.encodes if projector is not None else 0
        job.pos, image_s = self.seqs.eval_unit(job.chunks, job.items, unit, job.seq, job.pos)
        job.image_s += image_s
        job.encodes += (projector.encodes if projector is not None else 0) - before
        if unit.end in job.save_points:
            state = self.seqs.save(job.seq, with_logits=unit.end == len(job.items))
            self.model._states.put(tuple(job.items[: unit.end]), state, state.nbytes)
        if not job.units:
            job.t_prompt = time.perf_counter()
            job.phase = "decode"
            assert job.sampler is not None
            self._take(job, job.sampler.sample(self.rt.ctx))

    def _take_row(self, job: Job, *, row: int) -> None:
        assert job.sampler is not None
        logits = self.seqs.row_logits(row) if job.chat.logprobs is not None else None
        self._take(job, job.sampler.sample(self.rt.ctx, row), logits)

    def _take(self, job: Job, token: int, logits: Any = None) -> None:
        """A token sampled for ``job`` (from ``logits``, when they are not the context's
        last row): stream it, and finish or queue it for decoding."""
        rt, out = self.rt, job.out
        assert out is not None
        if out.n_out == 0:
            job.t_first = time.perf_counter()
        if rt.is_end(token):
            self._finish(job)
            return
        piece = out.take(token, logits)
        if piece:
            self._emit_piece(job, piece)
        if out.hit_stop:
            self._finish(job)
        elif out.n_out >= job.chat.params.max_tokens or job.pos + 1 >= rt.n_ctx_seq:
            self._finish(job, finish="length")
        else:
            job.pending = token

    @staticmethod
    def _emit_piece(job: Job, piece: str) -> None:
        """Send ``piece``, after the logprobs of the tokens it completes (when asked for)."""
        assert job.out is not None
        sent = len(job.logprobs)
        job.out.shown(piece)
        if not job.stream:
            return
        if len(job.logprobs) > sent:
            job.emit("logprobs", job.logprobs[sent:])
        job.emit("piece", piece)

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
        job.phase = "done"
        result = None
        try:
            if error is None and not cancelled:
                result = self._result(job, finish)
        except BaseException as exc:
            error = exc
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
        # the sequence is free before the request hears of its end
        if result is not None:
            job.emit("done", result)
        elif error is not None:
            job.emit("error", error)
        else:
            job.emit("cancelled", None)

    def _result(self, job: Job, finish: Literal["stop", "length"]) -> ChatResult:
        out = job.out
        assert out is not None
        if tail := out.tail():
            self._emit_piece(job, tail)
        t_end = time.perf_counter()
        if out.n_out == 0:
            job.t_first = t_end
        return out.result(
            finish,
            Usage(
                job.n_prompt, job.n_image_tokens, out.n_out, cached_tokens=job.cached_tokens, image_encodes=job.encodes
            ),
            Timings(
                prompt_ms=(job.t_prompt - job.t_start) * 1000,
                image_ms=job.image_s * 1000,
                first_token_ms=(job.t_first - job.t_start) * 1000,
                decode_ms=(t_end - job.t_first) * 1000,
            ),
        )
