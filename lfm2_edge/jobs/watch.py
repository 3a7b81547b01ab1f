"""``watch``: a source that keeps producing frames in, answers out as events.

``for event in watch(model, "/dev/video0", "Is anyone at the door?", every=5):`` runs
until the source ends (a file, stdin), ``stop`` is set, or the loop stops iterating;
:func:`awatch` is the same for asyncio. ``model`` is any chat model
(:class:`~lfm2_edge.VisionModel`, :class:`~lfm2_edge.RemoteModel`).

Latest frame wins: while the model answers, newer frames replace the waiting one; no
queue of stale frames builds (:class:`~lfm2_edge.jobs.feed.Feed`). A frame is answered
when it passes two gates: ``every`` (seconds since the last answered frame, on the
source's clock) and ``min_change`` (its distance to the last answered frame by the
thumbnail measure of :mod:`lfm2_edge.jobs.frames`: 0 same, 1 black against white;
default 0.05), so a still scene costs no encoder runs after its first answer.

Each answer is a :class:`WatchEvent` with the frame's capture time, the frames skipped
since the last answer (replaced while the model worked, or gated out), and the
capture-to-answer latency. ``when`` (a regex searched in the answer, or with ``schema``
the name of a boolean property) marks an answer ``matched``; a matched answer fires the
:class:`Actions` (``--exec``, ``--webhook``) unless they fired less than ``cooldown``
seconds before.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lfm2_edge.chat.contract import ChatModel
from lfm2_edge.chat.images import pinned_connection
from lfm2_edge.errors import InvalidParameterError, Lfm2EdgeError, ModelClosedError
from lfm2_edge.jobs.feed import END, Feed
from lfm2_edge.jobs.frames import Notice, change
from lfm2_edge.jobs.sources import Source, open_source

__all__ = ["DEFAULT_MIN_CHANGE", "Actions", "Condition", "WatchEvent", "awatch", "watch"]

DEFAULT_MIN_CHANGE = 0.05
DEFAULT_COOLDOWN_S = 60.0
DEFAULT_MAX_TOKENS = 128


@dataclass
class WatchEvent:
    """One line of ``watch``'s output. ``event``: ``answer``, ``error`` (one frame or
    action failed; the run goes on), ``reconnecting`` / ``connected``, or ``end``."""

    event: str
    source: str
    time: float = field(default_factory=time.time)
    frame: int | None = None
    captured: float | None = None  # wall clock, seconds since the epoch
    pts: float | None = None  # the video's own timestamp
    file: str | None = None  # the folder's file the frame came from
    skipped: int | None = None
    change: float | None = None
    latency_s: float | None = None  # capture to answer
    text: str | None = None
    data: Any = None  # the answer parsed, with a schema
    matched: bool | None = None
    fired: list[str] | None = None
    message: str | None = None
    answers: int | None = None  # on ``end``: the run's totals
    frames: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def line(self) -> str:
        """The event as a terminal line."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self.captured or self.time))
        if self.event == "answer":
            mark = " *" if self.matched else ""
            return f"{stamp} [{self.latency_s:.2f}s, skipped {self.skipped}]{mark} {self.text}"
        if self.event == "end":
            return f"{stamp} end: {self.answers} answers, {self.frames} frames"
        return f"{stamp} {self.event}: {self.message}"


class Condition:
    """``--when``: with a schema whose properties name ``spec``, that property being true;
    otherwise ``spec`` is a regular expression searched in the answer's text."""

    def __init__(self, spec: str, schema: Mapping[str, Any] | None = None) -> None:
        self.spec = spec
        properties = (schema or {}).get("properties")
        self.field = spec if isinstance(properties, Mapping) and spec in properties else None
        self.regex = None
        if self.field is None:
            try:
                self.regex = re.compile(spec)
            except re.error as exc:
                raise InvalidParameterError(
                    f"--when {spec!r} is not a regular expression ({exc})", param="when"
                ) from None

    def __call__(self, text: str, data: Any) -> bool:
        if self.field is not None:
            return isinstance(data, Mapping) and data.get(self.field) is True
        assert self.regex is not None
        return self.regex.search(text) is not None


class Actions:
    """What a matched answer fires: ``exec`` (a command, no shell, the answer on its stdin
    and the event as JSON in ``$LFM2_EDGE_EVENT``) and ``webhook`` (a JSON POST), at most
    once per ``cooldown`` seconds, on one worker thread (a queue of at most 8 firings)."""

    def __init__(
        self,
        exec_cmd: str | None = None,
        webhook: str | None = None,
        *,
        cooldown: float = DEFAULT_COOLDOWN_S,
        allow_private: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.argv = shlex.split(exec_cmd) if exec_cmd else None
        if exec_cmd is not None and not self.argv:
            raise InvalidParameterError("--exec needs a command", param="exec")
        if webhook is not None and not webhook.startswith(("http://", "https://")):
            raise InvalidParameterError(f"--webhook must be an http(s) URL, not {webhook!r}", param="webhook")
        self.webhook, self.cooldown, self.allow_private, self.timeout = webhook, cooldown, allow_private, timeout
        self.problems: deque[str] = deque(maxlen=16)
        self._last: float | None = None
        self._queue: queue.Queue[WatchEvent | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._work, name="watch-actions", daemon=True)
        self._thread.start()

    @property
    def names(self) -> list[str]:
        return [n for n, on in (("exec", self.argv), ("webhook", self.webhook)) if on]

    def offer(self, event: WatchEvent, clock: float) -> list[str]:
        """Fire for ``event`` unless within the cooldown; what was fired."""
        if self._last is not None and clock - self._last < self.cooldown:
            return []
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.problems.append("actions are falling behind; dropped one firing")
            return []
        self._last = clock
        return self.names

    def _work(self) -> None:
        while (event := self._queue.get()) is not None:
            payload = json.dumps(event.to_dict(), ensure_ascii=False)
            if self.argv:
                try:
                    done = subprocess.run(
                        self.argv,
                        input=(event.text or "").encode("utf-8"),
                        stdout=sys.stderr,  # stdout is the events' stream
                        env={**os.environ, "LFM2_EDGE_EVENT": payload},
                        timeout=self.timeout,
                        check=False,
                    )
                    if done.returncode:
                        self.problems.append(f"--exec {self.argv[0]} exited with {done.returncode}")
                except (OSError, subprocess.TimeoutExpired) as exc:
                    self.problems.append(f"--exec {self.argv[0]}: {exc}")
            if self.webhook:
                try:
                    self._post(payload.encode("utf-8"))
                except (Lfm2EdgeError, OSError) as exc:
                    self.problems.append(f"--webhook: {exc}")

    def _post(self, body: bytes) -> None:
        assert self.webhook is not None
        conn, path = pinned_connection(self.webhook, self.allow_private, self.timeout)
        try:
            conn.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", "User-Agent": "lfm2-edge"}
            )
            response = conn.getresponse()
            response.read()
            if not 200 <= response.status < 300:
                raise OSError(f"{self.webhook} answered HTTP {response.status}")
        finally:
            conn.close()

    def close(self) -> None:
        """Wait for the firings queued so far, then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout=self.timeout + 5)


def watch(
    model: ChatModel,
    source: str | Source,
    prompt: str,
    *,
    every: float = 0.0,
    min_change: float = DEFAULT_MIN_CHANGE,
    schema: Mapping[str, Any] | None = None,
    when: str | Condition | None = None,
    actions: Actions | None = None,
    realtime: bool = True,
    allow_private: bool = False,
    poll: float = 1.0,
    stop: threading.Event | None = None,
    **chat_options: Any,
) -> Iterator[WatchEvent]:
    """Answer ``prompt`` about the frames of ``source`` (see :func:`open_source`), one
    :class:`WatchEvent` per answer, error and reconnect, then one ``end``.
    ``chat_options`` go to ``model.chat`` (``max_tokens`` defaults to 128)."""
    if every < 0 or not 0 <= min_change <= 1:
        raise InvalidParameterError("every must be >= 0 and min_change between 0 and 1", param="every")
    src = (
        source
        if isinstance(source, Source)
        else open_source(source, realtime=realtime, allow_private=allow_private, poll=poll)
    )
    condition = Condition(when, schema) if isinstance(when, str) else when
    chat_options.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    if schema is not None:
        chat_options["response_format"] = {"type": "json_schema", "json_schema": {"name": "watch", "schema": schema}}
    stop = stop or threading.Event()
    last_thumb: Any = None
    last_clock: float | None = None
    skipped = answers = frames = 0
    with Feed(src) as feed:
        while not stop.is_set():
            while actions is not None and actions.problems:
                yield WatchEvent("error", src.name, message=actions.problems.popleft())
            item = feed.take(0.25)
            if item is None:
                continue
            if item is END:
                break
            if isinstance(item, Notice):
                if item.kind == "fatal":
                    raise InvalidParameterError(item.message, param="source")
                yield WatchEvent(item.kind, src.name, time=item.at, message=item.message)
                continue
            assert isinstance(item, tuple)
            frame, replaced = item
            frames += replaced + 1
            skipped += replaced
            if every and last_clock is not None and frame.clock - last_clock < every:
                skipped += 1
                continue
            try:
                thumb = frame.thumbnail()
                moved = 1.0 if last_thumb is None else change(thumb, last_thumb)
                if last_thumb is not None and moved < min_change:
                    skipped += 1
                    continue
                image = frame.image()
            except Lfm2EdgeError as exc:
                yield WatchEvent("error", src.name, frame=frame.index, captured=frame.captured, message=str(exc))
                skipped += 1
                continue
            event = _answer(model, prompt, image, chat_options, stop, src.name, frame, schema)
            if event is None:  # stopped mid-answer
                break
            if event.event == "answer":
                event.skipped, event.change = skipped, round(moved, 4)
                last_thumb, last_clock, skipped = thumb, frame.clock, 0
                answers += 1
                if condition is not None:
                    event.matched = condition(event.text or "", event.data)
                    if event.matched and actions is not None:
                        event.fired = actions.offer(event, frame.clock)
            yield event
    yield WatchEvent("end", src.name, skipped=skipped, answers=answers, frames=frames)


def _answer(
    model: ChatModel,
    prompt: str,
    image: Any,
    options: dict[str, Any],
    stop: threading.Event,
    name: str,
    frame: Any,
    schema: Mapping[str, Any] | None,
) -> WatchEvent | None:
    """One answer about one frame, stopping between pieces once ``stop`` is set."""
    base = {"frame": frame.index, "captured": frame.captured, "pts": frame.pts, "file": frame.name}
    try:
        with model.chat(prompt, images=[image], stream=True, **options) as answer:
            for _ in answer:
                if stop.is_set():
                    return None
        result = answer.result
    except ModelClosedError:
        raise
    except Lfm2EdgeError as exc:
        return WatchEvent("error", name, message=str(exc), **base)
    text = result.text if result is not None else ""
    data = None
    if schema is not None:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    latency = time.time() - frame.captured
    return WatchEvent("answer", name, text=text, data=data, latency_s=round(latency, 4), **base)


async def awatch(model: ChatModel, source: str | Source, prompt: str, **options: Any) -> AsyncIterator[WatchEvent]:
    """:func:`watch` for asyncio: the watch runs on a worker thread, its events come to
    the event loop; leaving the ``async for`` (or cancelling it) stops the watch."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue()
    stop = threading.Event()

    def run() -> None:
        try:
            for event in watch(model, source, prompt, stop=stop, **options):
                loop.call_soon_threadsafe(events.put_nowait, event)
                if stop.is_set():
                    break
            loop.call_soon_threadsafe(events.put_nowait, None)
        except BaseException as exc:  # handed to the consumer
            loop.call_soon_threadsafe(events.put_nowait, exc)

    worker = threading.Thread(target=run, name="awatch", daemon=True)
    worker.start()
    try:
        while (event := await events.get()) is not None:
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        stop.set()
        await asyncio.to_thread(worker.join, 30)
