"""The models one ``serve`` answers with (``serve A B C``), as Ollama and llama-server's
router mode hold them: each is loaded on the first request that names it, kept while
requests use it and for its keep-alive after the last one ends (``--keep-alive``, or a
request's Ollama ``keep_alive``), then unloaded, its memory given back. When loading
one would pass ``--models-max`` loaded models or the memory budget (doctor's estimate of
each against the RAM free at start), the least recently used idle model is unloaded
first; a request waits for one to become idle when none is.

Everything here runs on the event loop, so a model's state changes in one place; a
load or an unload runs in a thread of its own, so one model's load never stalls
another's decoding (each model has its own engines, slots and caches).
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lfm2_edge.local.device import ram_here
from lfm2_edge.local.doctor import RUNTIME_BYTES, estimate_memory, reserve_bytes
from lfm2_edge.openai import ApiError, model_not_found

__all__ = ["FOREVER", "Pool", "Served", "default_budget", "parse_duration", "size_of"]

#: A keep-alive that never unloads (Ollama's -1).
FOREVER: float | None = None

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: Any) -> float | None:
    """A keep-alive in seconds, as Ollama reads one: a number of seconds, or Go's
    duration text ("5m", "1h30m", "250ms"); negative means forever (:data:`FOREVER`).
    A :class:`ValueError` saying what it takes otherwise."""
    wrong = ValueError(f'a duration such as "5m", "30s" or -1, not {value!r}')
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise wrong
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        body = text.lstrip("+-")
        try:
            seconds = float(body)
        except ValueError:
            parts = _GO_DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise wrong from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
        if not math.isfinite(seconds):
            raise wrong
        seconds = -seconds if text.startswith("-") else seconds
    else:
        raise wrong
    return FOREVER if seconds < 0 else seconds


def size_of(model_path: Any, mmproj_path: Any, *, n_ctx: int, replicas: int = 1) -> int:
    """The bytes a model adds to a ``serve`` that holds several, by doctor's estimate: its
    weights once, a context per replica; the runtime is the process's, counted once."""
    est = estimate_memory(model_path, mmproj_path, n_ctx=n_ctx)
    per_context = est.kv_cache + est.recurrent + est.lm_compute + est.vision_compute
    return est.total - est.runtime + (replicas - 1) * per_context


def default_budget() -> int:
    """The default memory budget: the RAM available now, less doctor's reserve and the
    process's runtime."""
    _, available = ram_here()
    return max(available - reserve_bytes(available) - RUNTIME_BYTES, 0)


@dataclass(eq=False)
class Served:
    """One model the server may answer with: the names requests call it by, its files,
    how to load its replicas (``load``, run in a thread; None: given loaded, never
    unloaded), the bytes they hold once loaded (doctor's estimate; 0 unknown), and what
    the endpoints say of it unloaded (its card's sampling, its context per slot)."""

    names: tuple[str, ...]
    model_path: str
    mmproj_path: str | None = None
    load: Callable[[], list[Any]] | None = None
    size: int = 0
    sampling: Any = None
    n_ctx_per_seq: int | None = None
    models: list[Any] = field(default_factory=list)  # the loaded replicas; empty when unloaded
    state: str = "unloaded"  # loading, loaded
    active: int = 0  # requests that hold it: waiting for its load, queued on or running on its engines
    used: float = 0.0  # monotonic time a request last ended (least recently used goes first)
    expires: float | None = None  # wall-clock time it unloads while idle (None: it stays)
    keep: float | None = FOREVER  # its keep-alive once idle: the latest request's, as Ollama's scheduler
    loads: int = 0
    load_ms: float = 0.0  # the last load's time
    error: str | None = None  # why the last load failed
    _loading: asyncio.Future[None] | None = None

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def loaded(self) -> bool:
        return self.state == "loaded"


class Pool:
    """The served models, by name. ``keep_alive``: seconds an idle model stays loaded
    (:data:`FOREVER`: until the server stops); ``models_max``: the most loaded at once;
    ``memory_budget``: bytes their estimates may add up to (None: no budget)."""

    def __init__(
        self,
        served: Sequence[Served],
        *,
        keep_alive: float | None = FOREVER,
        models_max: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        self.served = list(served)
        self.keep_alive = keep_alive
        self.models_max = models_max
        self.memory_budget = memory_budget
        self._by_name: dict[str, Served] = {}
        for s in self.served:
            for name in s.names:
                other = self._by_name.setdefault(name, s)
                if other is not s:
                    raise ValueError(f"two served models answer to {name!r}: {other.model_path} and {s.model_path}")
        self._changed: asyncio.Event | None = None  # set when a model becomes idle or unloads
        self._lock = threading.Lock()  # readers on other threads (/metrics) copy `models` under it
        self.unloads = 0
        self._tasks: set[asyncio.Future[bool]] = set()  # unloads under way

    @classmethod
    def of_loaded(cls, models: Sequence[Any], names: Sequence[str]) -> Pool:
        """A pool of one model given loaded (its replicas), kept until the server stops."""
        first = models[0]
        path, mmproj = str(first.model_path), getattr(first, "mmproj_path", None)
        served = Served(tuple(names), path, mmproj, sampling=getattr(first, "sampling", None))
        served.models, served.state = list(models), "loaded"
        return cls([served])

    def load_now(self, served: Served) -> None:
        """Load ``served`` before the server starts (``serve`` loads its first model so
        that a broken file fails at start); its keep-alive starts now."""
        assert served.load is not None
        started = time.perf_counter()
        self._set_loaded(served, served.load(), started)
        served.keep = self.keep_alive
        served.expires = None if self.keep_alive is None else time.time() + self.keep_alive

    def _set_loaded(self, served: Served, models: list[Any], started: float) -> None:
        with self._lock:
            served.models, served.state = models, "loaded"
        served.loads += 1
        served.load_ms = (time.perf_counter() - started) * 1000
        served.error = None

    def _take(self, served: Served) -> list[Any]:
        """Mark ``served`` unloaded; its replicas, for the caller to close."""
        with self._lock:
            models, served.models, served.state = served.models, [], "unloaded"
        served.expires = None
        return models

    @property
    def names(self) -> list[str]:
        """Every name a request may use, the first model's first (the default)."""
        return list(self._by_name)

    def find(self, name: str) -> Served:
        served = self._by_name.get(name)
        if served is None:
            raise model_not_found(name, self.names)
        return served

    def replicas(self) -> list[Any]:
        """The loaded replicas of every model (for /slots and /metrics, from any thread)."""
        with self._lock:
            return [m for s in self.served for m in s.models]

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- a request's hold on a model --------------------------------------------------

    async def acquire(self, served: Served, keep_alive: float | None, cancel: threading.Event | None = None) -> float:
        """Hold ``served`` for a request, loading it first when it is not loaded (and
        making room for it); the milliseconds the request waited for that. The request's
        ``keep_alive`` (seconds, :data:`FOREVER`; the pool's :attr:`keep_alive` for a
        request that names none) becomes the model's: it starts when no request holds it.
        A failed load raises a 503 that says why; ``cancel`` set while waiting raises a 499."""
        served.active += 1
        served.expires = None
        served.keep = keep_alive
        if served.loaded:
            return 0.0
        started = time.perf_counter()
        try:
            while not served.loaded:
                if served._loading is None:
                    served._loading = asyncio.ensure_future(self._load(served))
                await _wait(asyncio.shield(served._loading), cancel)
        except BaseException:
            self.release(served)
            raise
        return (time.perf_counter() - started) * 1000

    def release(self, served: Served) -> None:
        """A request is done with ``served``; its keep-alive starts when no other request
        holds it (at once for 0)."""
        served.active -= 1
        served.used = time.monotonic()
        if served.active == 0 and served.loaded and served.load is not None:
            if served.keep is None:  # FOREVER
                served.expires = None
            else:
                served.expires = time.time() + served.keep
                if served.keep == 0:
                    asyncio.get_running_loop().call_soon(self.expire)
        self._wake()

    # -- loading and unloading ------------------------------------------------------

    async def _load(self, served: Served) -> None:
        try:
            if served.load is None:  # a model given loaded was never unloaded
                raise ApiError(503, f"model {served.name!r} is not loaded", type="server_error")
            await self._make_room(served)
            served.state = "loading"
            started = time.perf_counter()
            try:
                models = await asyncio.to_thread(served.load)
            except Exception as exc:
                served.state, served.error = "unloaded", str(exc) or type(exc).__name__
                raise ApiError(
                    503, f"model {served.name!r} could not be loaded: {served.error}", type="server_error"
                ) from None
            self._set_loaded(served, models, started)
        finally:
            served._loading = None
            self._wake()

    def _over(self, adding: Served) -> bool:
        held = [s for s in self.served if s is not adding and s.state != "unloaded"]
        if not held:
            return False  # alone, it loads whatever the budget says (doctor warns of that)
        if self.models_max is not None and len(held) + 1 > self.models_max:
            return True
        return self.memory_budget is not None and sum(s.size for s in held) + adding.size > self.memory_budget

    async def _make_room(self, adding: Served) -> None:
        """Unload the least recently used idle models until ``adding`` fits; wait for
        one to become idle when every loaded one is in use."""
        while self._over(adding):
            idle = [s for s in self.served if s.loaded and s.active == 0 and s.load is not None and s is not adding]
            if idle:
                await self.unload(min(idle, key=lambda s: s.used))
            else:
                await self._event().wait()

    async def unload(self, served: Served) -> bool:
        """Unload ``served`` now if it is loaded and no request holds it; whether it did."""
        if not served.loaded or served.active or served.load is None:
            return False
        await asyncio.to_thread(_close, self._take(served))
        self.unloads += 1
        self._wake()
        return True

    async def unload_when_idle(self, served: Served) -> bool:
        """Unload ``served`` now, or as the last request that holds it ends (Ollama's
        ``keep_alive`` 0 on a model in use; a request that comes later sets its own);
        whether it unloaded now."""
        served.keep = 0
        return await self.unload(served)

    def expire(self) -> None:
        """Schedule the unload of every idle model whose keep-alive has run out."""
        now = time.time()
        for served in self.served:
            if served.expires is not None and served.expires <= now and served.active == 0:
                served.expires = None
                self._tasks.add(task := asyncio.ensure_future(self.unload(served)))
                task.add_done_callback(self._tasks.discard)

    async def reap(self, every: float = 0.25) -> None:
        """Unload idle models as their keep-alive runs out, until cancelled."""
        while True:
            self.expire()
            await asyncio.sleep(every)

    async def close(self) -> None:
        """Unload every model this pool loaded (a model given loaded is its owner's)."""
        for served in self.served:
            if served.load is not None and served.models:
                await asyncio.to_thread(_close, self._take(served))

    # -- what the endpoints report ---------------------------------------------------

    def status(self, served: Served) -> dict[str, Any]:
        """A model's state, as llama-server's router reports it in /v1/models (``value``:
        unloaded, loading or loaded), with when it unloads."""
        out: dict[str, Any] = {"value": served.state}
        if served.loaded:
            out["expires_at"] = served.expires  # None: while in use, or kept for good
            out["load_ms"] = round(served.load_ms, 1)
        if served.error and not served.loaded:
            out["failed"] = True
            out["error"] = served.error
        return out


def _close(models: list[Any]) -> None:
    for model in models:
        model.close()
    _trim()


def _trim() -> None:
    """Hand the heap's freed pages back to the system (glibc's ``malloc_trim``): a model's
    CPU buffers are freed into malloc's arenas, which glibc keeps for later allocations
    once its mmap threshold has risen, so an unloaded model would not lower the RSS."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: macOS, musl
        return
    trim(0)


async def _wait(future: asyncio.Future[None], cancel: threading.Event | None) -> None:
    """Await ``future``; a 499 as soon as ``cancel`` is set (the client went away)."""
    while True:
        done, _ = await asyncio.wait({future}, timeout=0.1)
        if done:
            future.result()
            return
        if cancel is not None and cancel.is_set():
            raise ApiError(499, "the request was cancelled: its client went away", code="cancelled")
