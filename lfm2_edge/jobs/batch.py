"""The batch runner: many items, one answer (or one error record) each, every engine
slot busy.

A pool of reader threads reads each item's image files ahead of need, computes its
resume key (:func:`~lfm2_edge.jobs.inputs.content_key`), skips it when a previous run
answered it, and decodes its images (Pillow, off the engine's thread) into a bounded
queue. One worker thread per slot takes the next decoded item and posts it to the
model's engine (:class:`LocalBackend`: ``model.chat(..., stream=True)``, that is ``check_call``,
``prepare`` and a ``Job`` on the engine, as ``serve`` posts them) or to a server
(:class:`RemoteBackend`: :class:`~lfm2_edge.RemoteModel`, a bounded number of requests
per endpoint, failed requests retried with backoff). Identical images are encoded once:
the model's embedding cache (``embedding_cache_mb``) holds each tile's embedding by its
pixels' digest.

The caller's thread takes the records as they finish (completion order) and writes
them (:mod:`lfm2_edge.jobs.outputs`). Nothing an item does ends the run: an unreadable,
non-image, huge or truncated file, a prompt that overflows the context, an answer that
does not validate against the schema (retried once) or was cut by ``max_tokens`` with a
schema (retried once with four times the room) each become an error record with a
one-line reason. :meth:`Runner.stop` (Ctrl-C) stops taking items, cancels those in
flight (a rerun answers them) and keeps every finished one.

Apps use :func:`batch`: ``for record in batch(model, ["a.jpg", "b.jpg"], prompt=...)``.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lfm2_edge.chat.images import LoadedImage, load_image
from lfm2_edge.chat.results import ChatResult
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.jobs.backends import Backend, Interrupted, LocalBackend, RemoteBackend, SharedRemote
from lfm2_edge.jobs.inputs import Item, content_key, items_of
from lfm2_edge.jobs.outputs import Record, SidecarWriter, Writer
from lfm2_edge.jobs.records import (
    DEFAULT_PROMPT,
    BatchOptions,
    Summary,
    error_record,
    item_key,
    read_blobs,
    record_base,
)
from lfm2_edge.openai import ApiError, RequestLimits, completion_body, parse_chat_request
from lfm2_edge.openai.client import RemoteModel

__all__ = [
    "DEFAULT_PROMPT",
    "BatchOptions",
    "Interrupted",
    "LocalBackend",
    "RemoteBackend",
    "Runner",
    "Summary",
    "batch",
    "error_record",
    "item_key",
]


@dataclass
class _Ready:
    item: Item
    key: str
    messages: list[dict[str, Any]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    error: Record | None = None  # failed while reading: recorded as is


class Runner:
    """Runs items through a backend and hands out their records as they finish."""

    def __init__(
        self, backend: Backend, opts: BatchOptions, *, kind: str = "images", writer: Writer | None = None
    ) -> None:
        self.backend, self.opts, self.kind, self.writer = backend, opts, kind, writer
        self.summary = Summary()
        self._stop = threading.Event()
        self._cancels: set[threading.Event] = set()
        self._cancels_lock = threading.Lock()
        self._validator: Any = None
        if opts.schema is not None:
            import jsonschema

            cls = jsonschema.validators.validator_for(opts.schema)
            cls.check_schema(opts.schema)
            self._validator = cls(opts.schema)

    def stop(self, reason: str = "interrupted") -> None:
        """Stop taking items; cancel those in flight (no record: a rerun answers them)."""
        if self.summary.stopped is None:
            self.summary.stopped = reason
        self._stop.set()
        with self._cancels_lock:
            for cancel in self._cancels:
                cancel.set()

    # -- the stages ---------------------------------------------------------------

    def run(self, items: Sequence[Item]) -> Generator[Record, None, None]:
        """Yield each item's record as it finishes (skipped items yield none)."""
        t0 = time.perf_counter()
        encodes0 = self.backend.image_encodes()
        self.summary.total = len(items)
        done = self.writer.done() if self.writer is not None and not self.opts.retry_errors else {}
        if self.writer is not None and self.opts.retry_errors:
            done = self._answered_only()
        todo: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        for item in items:
            todo.put(item)
        slots = max(1, self.backend.slots)
        ready: queue.Queue[_Ready | None] = queue.Queue(maxsize=self.opts.read_ahead or 2 * slots)
        records: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        n_readers = max(1, self.opts.readers)
        for _ in range(n_readers):
            todo.put(None)
        readers_left = [n_readers]
        left_lock = threading.Lock()

        def reader() -> None:
            try:
                while not self._stop.is_set():
                    item = todo.get()
                    if item is None:
                        return
                    got = self._read(item, done)
                    if got is None:
                        with left_lock:
                            self.summary.skipped += 1
                        continue
                    while not self._stop.is_set():
                        try:
                            ready.put(got, timeout=0.1)
                            break
                        except queue.Full:
                            continue
            finally:
                with left_lock:
                    readers_left[0] -= 1
                    last = readers_left[0] == 0
                if last:  # the end of the items: one None for each worker
                    for _ in range(slots):
                        while not self._stop.is_set():
                            try:
                                ready.put(None, timeout=0.1)
                                break
                            except queue.Full:
                                continue

        def worker() -> None:
            try:
                while not self._stop.is_set():
                    try:
                        got = ready.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if got is None or self._stop.is_set():
                        return
                    record = got.error if got.error is not None else self._answer(got)
                    if record is not None:
                        records.put(record)
            finally:
                records.put(None)

        threads = [threading.Thread(target=reader, name="lfm2-edge-batch-read", daemon=True) for _ in range(n_readers)]
        threads += [threading.Thread(target=worker, name="lfm2-edge-batch-slot", daemon=True) for _ in range(slots)]
        for t in threads:
            t.start()
        workers_left = slots
        try:
            while workers_left:
                try:
                    record = records.get(timeout=0.2)
                except queue.Empty:
                    continue
                if record is None:
                    workers_left -= 1
                    continue
                if self.writer is not None:
                    self.writer.write(record)
                if record.get("error") is None:
                    self.summary.answered += 1
                else:
                    self.summary.failed += 1
                    if self.opts.fail_fast:
                        self.stop("fail-fast")
                yield record
        finally:
            if workers_left:  # stopped early (Ctrl-C, fail-fast, a closed generator)
                self.stop(self.summary.stopped or "interrupted")
                for t in threads:
                    t.join(timeout=60)
                while True:  # answers that finished as it stopped are kept too
                    try:
                        record = records.get_nowait()
                    except queue.Empty:
                        break
                    if record is not None:
                        if self.writer is not None:
                            self.writer.write(record)
                        if record.get("error") is None:
                            self.summary.answered += 1
                        else:
                            self.summary.failed += 1
            s = self.summary
            s.interrupted = max(0, s.total - s.answered - s.failed - s.skipped)
            s.seconds = time.perf_counter() - t0
            s.image_encodes = self.backend.image_encodes() - encodes0

    def _answered_only(self) -> dict[str, str]:
        """With ``retry_errors``: only the ids answered without an error count as done."""
        assert self.writer is not None
        path = self.writer.path
        done = self.writer.done()
        if path is None or not path.exists() or path.suffix.lower() == ".csv":
            return done
        failed: set[str] = set()
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("error"):
                failed.add(str(row.get("id") if "id" in row and "custom_id" not in row else row.get("custom_id")))
        return {k: v for k, v in done.items() if k not in failed}

    def _read(self, item: Item, done: Mapping[str, str]) -> _Ready | None:
        """Read and decode an item (a reader thread); None when an earlier run did it."""
        opts = self.opts
        blobs, failure = read_blobs(item)
        key = content_key(item, blobs, opts.extra_key())
        if done.get(item.id) == key:
            return None
        if isinstance(self.writer, SidecarWriter) and item.first_image and self.writer.done_for(item.first_image, key):
            return None
        if failure is not None:
            return _Ready(item, key, error=error_record(item, key, failure))
        try:
            if item.body is not None:
                messages, options = self._openai_request(item)
            else:
                loaded: list[LoadedImage] = []
                for ref, blob in zip(item.images, blobs, strict=True):
                    source: Any = blob if not ref.startswith(("http://", "https://", "data:")) else ref
                    try:
                        loaded.append(load_image(source, allow_private=True, max_pixels=opts.max_pixels))
                    except Lfm2EdgeError as exc:
                        text = str(exc)
                        text = text.replace("the image data", ref, 1) if "the image data" in text else f"{ref}: {text}"
                        raise type(exc)(text) from None
                content: list[dict[str, Any]] = [{"type": "image", "image": im} for im in loaded]
                content.append({"type": "text", "text": item.prompt or opts.prompt})
                messages = [{"role": "system", "content": opts.system}] if opts.system is not None else []
                messages.append({"role": "user", "content": content})
                options = dict(opts.options)
                if opts.schema is not None:
                    options["response_format"] = {
                        "type": "json_schema",
                        "json_schema": {"name": "answer", "schema": dict(opts.schema)},
                    }
        except (Lfm2EdgeError, ApiError) as exc:
            return _Ready(item, key, error=error_record(item, key, exc))
        return _Ready(item, key, messages, options)

    def _openai_request(self, item: Item) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """An OpenAI Batch line's body, checked as ``serve`` checks it, images decoded."""
        assert item.body is not None
        model = item.body.get("model")
        limits = RequestLimits(
            [str(model) if model is not None else self.opts.model_name], max_images=64, allow_remote_images=True
        )
        request = parse_chat_request(item.body, limits)
        options = dict(self.opts.options)
        options.update(request.options)
        if request.max_tokens is None:
            options.setdefault("max_tokens", self.opts.max_tokens())
        messages: list[dict[str, Any]] = []
        for m in request.messages:
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image_url":
                        url = part["image_url"]["url"] if isinstance(part.get("image_url"), dict) else part["image_url"]
                        im = load_image(url, allow_private=True, max_pixels=self.opts.max_pixels)
                        parts.append({"type": "image", "image": im})
                    else:
                        parts.append(part)
                m = {**m, "content": parts}
            messages.append(m)
        return messages, options

    def _answer(self, got: _Ready) -> Record | None:
        """Answer one read item (a worker thread): its record, None if interrupted."""
        assert got.messages is not None
        cancel = threading.Event()
        with self._cancels_lock:
            if self._stop.is_set():
                return None
            self._cancels.add(cancel)
        options = dict(got.options)
        attempts = 0
        try:
            while True:
                attempts += 1
                try:
                    result = self.backend.answer(got.messages, options, cancel)
                except Interrupted:
                    return None
                except Exception as exc:
                    if self._stop.is_set() and cancel.is_set():
                        return None
                    return error_record(got.item, got.key, exc, attempts)
                problem, parsed = self._check(result, options)
                if problem is None:
                    return self._record(got, result, parsed, attempts)
                if attempts >= 2:
                    return error_record(got.item, got.key, _Rejected(problem), attempts)
                if result.finish_reason == "length":  # retry once with room
                    options["max_tokens"] = int(options.get("max_tokens") or self.opts.max_tokens()) * 4
                elif options.get("seed") is not None:
                    options["seed"] = int(options["seed"]) + 1
        finally:
            with self._cancels_lock:
                self._cancels.discard(cancel)

    def _check(self, result: ChatResult, options: Mapping[str, Any]) -> tuple[str | None, Any]:
        """Why an answer is refused (None: it is fine), and its parsed JSON (a schema's)."""
        if self._validator is None:
            return None, None
        if result.finish_reason == "length":
            return f"the answer was cut at max_tokens={options.get('max_tokens')} before its JSON ended", None
        try:
            data = json.loads(result.text)
        except ValueError as exc:
            return f"the answer is not JSON ({exc})", None
        error = next(iter(sorted(self._validator.iter_errors(data), key=lambda e: list(e.path))), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "the answer"
            return f"the answer does not follow the schema at {where}: {error.message}", None
        return None, data

    def _record(self, got: _Ready, result: ChatResult, parsed: Any, attempts: int) -> Record:
        item = got.item
        record = record_base(item, got.key)
        if self.kind == "openai":
            body = completion_body(result, f"chatcmpl-{got.key}", self.opts.model_name, int(time.time()))
            record.update(completion=body, error=None)
            return record
        if self.opts.schema is not None:
            record["json"] = parsed
        record.update(
            answer=result.text,
            finish_reason=result.finish_reason,
            usage=asdict(result.usage),
            timings={k: round(v, 2) for k, v in asdict(result.timings).items()},
            attempts=attempts,
            error=None,
            error_type=None,
        )
        return record


class _Rejected(Lfm2EdgeError):
    """An answer the job refused: not valid for the schema, or cut by max_tokens."""


def batch(
    model: Any,
    items: Iterable[Any],
    *,
    prompt: str = DEFAULT_PROMPT,
    schema: Mapping[str, Any] | None = None,
    system: str | None = None,
    writer: Writer | None = None,
    fail_fast: bool = False,
    readers: int = 2,
    **options: Any,
) -> Iterator[Record]:
    """Answer ``prompt`` about each item and yield its record as it finishes.

    ``model`` is a :class:`~lfm2_edge.VisionModel` (built with ``n_seq_max=K`` to answer K
    items at once) or a :class:`~lfm2_edge.RemoteModel`; ``items`` are image paths, URLs,
    :class:`~lfm2_edge.jobs.inputs.Item` objects or mappings (``id``, ``image`` or
    ``images``, ``prompt``). ``options`` are ``chat()``'s sampling keywords
    (``max_tokens``, ``temperature``, ``seed``...). Each record is a dict: ``id``,
    ``key``, ``source``, ``answer``, ``json`` (with ``schema``: the parsed, validated
    answer), ``finish_reason``, ``usage``, ``timings``, ``error`` (None, or one line),
    ``error_type``. With ``writer`` (:func:`lfm2_edge.jobs.outputs.make_writer`) the
    records are also written, and items it already holds are skipped.

    >>> model = VisionModel("model.gguf", "mmproj.gguf", n_seq_max=4, n_ctx=8192)
    >>> for r in batch(model, ["a.jpg", "b.jpg"], prompt="Alt text?", max_tokens=64):
    ...     print(r["id"], r["error"] or r["answer"])
    """
    if isinstance(model, RemoteModel):
        backend: Backend = SharedRemote(model)
    else:
        backend = LocalBackend(model)
    opts = BatchOptions(prompt=prompt, system=system, schema=schema, options=options, fail_fast=fail_fast)
    opts.readers = readers
    runner = Runner(backend, opts, writer=writer)
    gen = runner.run(items_of(items))
    try:
        yield from gen
    finally:
        gen.close()
