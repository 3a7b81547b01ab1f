"""Where ``watch`` gets frames: a camera, a video file, an RTSP / MJPEG / snapshot URL, a
folder that fills, or ``-`` (JPEG / PNG files one after another on stdin).

:func:`open_source` reads the spec; :class:`~lfm2_edge.jobs.feed.Feed` runs the source on a
reader thread and keeps only the latest frame (latest frame wins: a frame that arrives while the model
works replaces the one waiting, and is counted as skipped). A video file read with
``realtime=False`` is the exception: its reader waits for each frame to be taken, so the
whole file is looked at, as fast as the watcher goes.

Video (files, cameras, RTSP) is decoded by PyAV, the optional extra ``video``
(``pip install 'lfm2-edge[video]'``): its wheels bundle FFmpeg for x86-64 and aarch64
Linux (a Raspberry Pi, a Jetson), macOS and Windows, so nothing else is installed; it
imports in well under a second; and each decoded frame carries its own presentation
timestamp (``frame.time``), which OpenCV's ``CAP_PROP_POS_MSEC`` only estimates. It reads
V4L2 cameras (``/dev/video0``) and RTSP through the same ``av.open``.

Network sources follow the rules of remote images (:mod:`lfm2_edge.chat.images`): the
host is resolved once and refused when it is loopback, private or link-local unless
``allow_private``; that address is then used. A live source that drops or fails is
reconnected with backoff (0.5 s doubling to 30 s); a file ends the run.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import sys
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lfm2_edge.chat.images import (
    FILE_MAX_BYTES,
    fetch_url,
    pinned_connection,
    read_file,
    resolve_checked,
)
from lfm2_edge.errors import ImageError, InvalidParameterError, Lfm2EdgeError
from lfm2_edge.jobs.frames import MAX_FRAME_BYTES, Frame, Notice, probe, split_images

__all__ = ["Source", "open_source", "require_av"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".ts")
BACKOFF = (0.5, 30.0)  # first wait and most, doubling between
NET_TIMEOUT_S = 10.0


def require_av() -> Any:
    """PyAV, or one line saying how to get it."""
    try:
        import av
    except ImportError:
        raise InvalidParameterError(
            "video sources need PyAV: pip install 'lfm2-edge[video]' (or pip install av)", param="source"
        ) from None
    return av


class Source(ABC):
    """A producer of frames and notices; ``paced`` sources wait for each frame to be taken."""

    name: str
    paced = False
    interruptible = True

    @abstractmethod
    def items(self, stop: threading.Event) -> Iterator[Frame | Notice]: ...

    def interrupt(self) -> None:  # noqa: B027 (most sources have nothing to unblock)
        """Unblock a read in progress (the reader thread is stopping)."""


class _Live(Source):
    """A source that reconnects: ``connect_and_read`` yields until the stream ends or
    raises; then a ``reconnecting`` notice, a wait (backoff), and again."""

    def items(self, stop: threading.Event) -> Iterator[Frame | Notice]:
        wait = BACKOFF[0]
        index = 0
        down = False
        while not stop.is_set():
            reason = "the stream ended"
            try:
                for item in self.connect_and_read(stop):
                    if isinstance(item, Frame):
                        if down:
                            yield Notice("connected", f"{self.name} is back")
                            down = False
                        wait = BACKOFF[0]
                        item.index = index
                        index += 1
                    yield item
            except (Lfm2EdgeError, OSError, http.client.HTTPException, ValueError) as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # PyAV's errors (av.FFmpegError) and the like
                reason = f"{type(exc).__name__}: {exc}"
            if stop.is_set():
                return
            down = True
            yield Notice("reconnecting", f"{self.name}: {reason}; reconnecting in {wait:g} s")
            stop.wait(wait)
            wait = min(wait * 2, BACKOFF[1])

    @abstractmethod
    def connect_and_read(self, stop: threading.Event) -> Iterator[Frame | Notice]: ...


def _now_frame(payload: Any, pts: float | None = None) -> Frame:
    return Frame(payload, time.time(), time.monotonic(), 0, pts)


class VideoFile(Source):
    """A video file: frames at their own timestamps (``realtime``), or every frame as
    fast as the watcher takes them."""

    def __init__(self, path: Path, realtime: bool) -> None:
        self.name, self.path, self.realtime = str(path), path, realtime
        self.paced = not realtime

    def items(self, stop: threading.Event) -> Iterator[Frame | Notice]:
        av = require_av()
        try:
            container = av.open(str(self.path))
        except Exception as exc:
            raise InvalidParameterError(f"cannot open the video {self.path}: {exc}", param="source") from None
        with container:
            if not container.streams.video:
                raise InvalidParameterError(f"{self.path} has no video stream", param="source")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            start_wall, start_mono, first = time.time(), time.monotonic(), None
            try:
                for index, frame in enumerate(container.decode(stream)):
                    if stop.is_set():
                        return
                    pts = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 30)
                    first = pts if first is None else first
                    offset = pts - first
                    if self.realtime:
                        delay = start_mono + offset - time.monotonic()
                        if delay > 0 and stop.wait(delay):
                            return
                        yield Frame(frame, time.time(), time.monotonic(), index, pts)
                    else:
                        yield Frame(frame, time.time(), offset, index, pts)
            except Exception as exc:  # a damaged file: what was read counts, then one error
                yield Notice("error", f"{self.path}: decoding stopped: {type(exc).__name__}: {exc}")
            del start_wall


class AvStream(_Live):
    """A camera (V4L2 device, or an index on macOS / Windows) or an RTSP URL, through PyAV."""

    def __init__(self, name: str, target: str, fmt: str | None, options: dict[str, str]) -> None:
        self.name, self.target, self.fmt, self.options = name, target, fmt, options

    def connect_and_read(self, stop: threading.Event) -> Iterator[Frame | Notice]:
        av = require_av()
        container = av.open(self.target, format=self.fmt, options=self.options, timeout=(NET_TIMEOUT_S, 5.0))
        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            yield Notice("connected", f"{self.name} opened ({stream.codec_context.name})")
            for frame in container.decode(stream):
                if stop.is_set():
                    return
                yield _now_frame(frame, float(frame.time) if frame.time is not None else None)


def _rtsp(url: str, allow_private: bool) -> AvStream:
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise InvalidParameterError(f"{url} has no host", param="source")
    port = parts.port or 554
    ip = resolve_checked(parts.hostname, port, url, allow_private)
    host = f"[{ip}]" if ":" in ip else ip
    auth = f"{parts.username}:{parts.password or ''}@" if parts.username else ""
    pinned = urllib.parse.urlunsplit((parts.scheme, f"{auth}{host}:{port}", parts.path, parts.query, ""))
    shown = urllib.parse.urlunsplit((parts.scheme, f"{parts.hostname}:{port}", parts.path, "", ""))
    return AvStream(shown, pinned, None, {"rtsp_transport": "tcp"})


class HttpSource(_Live):
    """An http(s) URL: an MJPEG stream (``multipart/x-mixed-replace``) read part by part,
    or a snapshot URL (one image per GET) polled every ``poll`` seconds."""

    def __init__(self, url: str, allow_private: bool, poll: float) -> None:
        self.name, self.url, self.allow_private, self.poll = url, url, allow_private, poll
        self._conn: http.client.HTTPConnection | None = None

    def interrupt(self) -> None:
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)

    def connect_and_read(self, stop: threading.Event) -> Iterator[Frame | Notice]:
        url = self.url
        for _ in range(6):  # the first request and up to 5 redirects, each host checked
            conn, path = pinned_connection(url, self.allow_private, NET_TIMEOUT_S)
            self._conn = conn
            try:
                conn.request("GET", path, headers={"User-Agent": "lfm2-edge", "Accept": "image/*, multipart/*"})
                response = conn.getresponse()
                location = response.getheader("Location")
                if response.status in (301, 302, 303, 307, 308) and location:
                    url = urllib.parse.urljoin(url, location)
                    continue
                if response.status != 200:
                    raise ImageError(f"{self.name} answered HTTP {response.status}")
                kind = response.getheader("Content-Type") or ""
                if kind.lower().startswith("multipart/"):
                    match = re.search(r'boundary="?([^";]+)"?', kind)
                    yield Notice("connected", f"{self.name}: an MJPEG stream")
                    yield from self._parts(response, (match.group(1) if match else "").encode("latin-1"), stop)
                    return
            finally:
                conn.close()
                self._conn = None
            yield from self._snapshots(url, stop)
            return
        raise ImageError(f"{self.name}: too many redirects")

    def _snapshots(self, url: str, stop: threading.Event) -> Iterator[Frame | Notice]:
        while not stop.is_set():
            t0 = time.monotonic()
            data = fetch_url(url, self.allow_private, deadline=t0 + NET_TIMEOUT_S)
            yield from _checked(data, f"the snapshot of {self.name}")
            stop.wait(max(0.0, self.poll - (time.monotonic() - t0)))

    def _parts(self, response: http.client.HTTPResponse, boundary: bytes, stop: threading.Event) -> Iterator[Any]:
        marker = b"--" + boundary.removeprefix(b"--") if boundary else b"--"
        line = response.readline(65537)
        while line and not stop.is_set():
            if not line.strip():
                line = response.readline(65537)
                continue
            if not line.startswith(marker):
                raise ImageError(f"{self.name}: the MJPEG stream lost its part boundary")
            if line.strip().endswith(b"--") and line.strip() != marker:
                return  # the closing boundary
            length = None
            while (header := response.readline(65537)).strip():
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    length = int(value.strip())
            if length is not None:
                if length > MAX_FRAME_BYTES:
                    yield Notice("error", f"a part of {self.name} is over {MAX_FRAME_BYTES // 2**20} MiB; skipped it")
                    _discard(response, length)
                    line = response.readline(65537)
                    continue
                data = _read_exactly(response, length)
                line = response.readline(65537)
            else:  # no length: the part runs to the next boundary line
                chunks: list[bytes] = []
                size = 0
                line = response.readline(65537)
                while line and not line.startswith(marker):
                    chunks.append(line)
                    size += len(line)
                    if size > MAX_FRAME_BYTES:
                        raise ImageError(f"a part of {self.name} is over {MAX_FRAME_BYTES // 2**20} MiB")
                    line = response.readline(65537)
                data = b"".join(chunks).removesuffix(b"\r\n")
            yield from _checked(data, f"a frame of {self.name}")


def _read_exactly(response: http.client.HTTPResponse, n: int) -> bytes:
    data = response.read(n)
    if len(data) < n:
        raise ImageError("the stream ended inside a frame")
    return data


def _discard(response: http.client.HTTPResponse, n: int) -> None:
    while n > 0:
        got = response.read(min(n, 1 << 20))
        if not got:
            raise ImageError("the stream ended inside a frame")
        n -= len(got)


def _checked(data: bytes, what: str) -> Iterator[Frame | Notice]:
    try:
        probe(data, what)
    except ImageError as exc:
        yield Notice("error", str(exc))
        return
    yield _now_frame(data)


class Folder(Source):
    """A folder that fills: each new image file (by modification time, then name), once
    its size has stopped changing. Files there before the watch began are left alone."""

    def __init__(self, path: Path, poll: float = 0.25) -> None:
        self.name, self.path, self.poll = str(path), path, poll

    def _listing(self) -> list[tuple[int, str, int]]:
        found = []
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                try:
                    info = entry.stat()
                except OSError:
                    continue
                if entry.is_file():
                    found.append((info.st_mtime_ns, entry.name, info.st_size))
        return sorted(found)

    def items(self, stop: threading.Event) -> Iterator[Frame | Notice]:
        last = max(((m, n) for m, n, _ in self._listing()), default=(0, ""))  # files already there
        sizes: dict[str, int] = {}  # files seen once, waiting for their size to settle
        index = 0
        while not stop.wait(self.poll):
            try:
                listing = self._listing()
            except OSError as exc:
                yield Notice("error", f"cannot list {self.path}: {exc.strerror or exc}")
                continue
            pending = {}
            for mtime, name, size in listing:
                if (mtime, name) <= last:
                    continue
                if sizes.get(name) != size:  # still being written (or just appeared): next poll
                    pending[name] = size
                    continue
                last = (mtime, name)
                try:
                    data = read_file(self.path / name, "an image", FILE_MAX_BYTES)
                except ImageError as exc:
                    yield Notice("error", str(exc))
                    continue
                for item in _checked(data, str(self.path / name)):
                    if isinstance(item, Frame):
                        item.index, item.name = index, name
                        index += 1
                    yield item
            sizes = pending  # bounded by the files not yet settled


class Stdin(Source):
    """``-``: JPEG / PNG files one after another on standard input; the run ends with it."""

    name = "stdin"
    interruptible = False  # a read of fd 0 cannot be unblocked: the reader is left to the process's end

    def items(self, stop: threading.Event) -> Iterator[Frame | Notice]:
        fd = sys.stdin.fileno()
        index = 0
        for item in split_images(lambda n: os.read(fd, n)):
            if stop.is_set():
                return
            if isinstance(item, Notice):
                yield item
                continue
            for checked in _checked(item, f"image {index} on stdin"):
                if isinstance(checked, Frame):
                    checked.index = index
                yield checked
            index += 1


def _camera(spec: str) -> AvStream:
    if sys.platform == "darwin":
        return AvStream(f"camera {spec}", spec.removeprefix("/dev/video"), "avfoundation", {"framerate": "30"})
    if sys.platform == "win32":
        return AvStream(f"camera {spec}", f"video={spec}", "dshow", {})
    device = f"/dev/video{spec}" if spec.isdigit() else spec
    if not os.path.exists(device):
        raise InvalidParameterError(f"no camera at {device} (is it plugged in? `ls /dev/video*`)", param="source")
    if not os.access(device, os.R_OK):
        raise InvalidParameterError(f"{device} is not readable: add yourself to the 'video' group", param="source")
    return AvStream(f"camera {device}", device, "v4l2", {})


def open_source(spec: str, *, realtime: bool = True, allow_private: bool = False, poll: float = 1.0) -> Source:
    """The source ``spec`` names; a spec that names nothing usable is one clear line
    (:class:`~lfm2_edge.errors.InvalidParameterError`), raised here, before any model work."""
    if spec == "-":
        return Stdin()
    lower = spec.lower()
    if lower.startswith(("rtsp://", "rtsps://")):
        require_av()
        return _rtsp(spec, allow_private)
    if lower.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(spec)
        if not parts.hostname:
            raise InvalidParameterError(f"{spec} has no host", param="source")
        resolve_checked(parts.hostname, parts.port or 80, spec, allow_private)  # refused now, not retried
        return HttpSource(spec, allow_private, poll)
    if "://" in spec:
        raise InvalidParameterError(
            f"{spec.split('://', 1)[0]}:// sources are not supported; use rtsp://, http(s)://, a camera, "
            "a video file, a folder or -",
            param="source",
        )
    if spec.isdigit() or spec.startswith("/dev/video"):
        require_av()
        return _camera(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return Folder(path)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise InvalidParameterError(
                f"{path} is one image: use `lfm2-edge chat -i`, or watch the folder it is written to", param="source"
            )
        require_av()
        return VideoFile(path, realtime)
    raise InvalidParameterError(f"no such file, folder or camera: {spec}", param="source")
