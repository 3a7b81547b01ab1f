"""The one slot a source's latest frame waits in: :class:`Feed` runs a
:class:`~lfm2_edge.jobs.sources.Source` on a reader thread; a frame that arrives while
the watcher is busy replaces the one waiting (and is counted), so no queue of stale frames
ever builds. Notices (errors, reconnects) queue beside it, at most 64, never replaced by
frames. A ``paced`` source (a video file read with ``realtime=False``) waits instead."""

from __future__ import annotations

import threading
from collections import deque

from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.jobs.frames import Frame, Notice
from lfm2_edge.jobs.sources import Source

__all__ = ["END", "Feed"]

END = object()  # what Feed.take returns once the source is over


class Feed:
    """A source on its reader thread, and the one slot its latest frame waits in."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._replaced = 0  # frames that lost their place in the slot since the last take
        self._notices: deque[Notice] = deque(maxlen=64)
        self._ended = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch:{source.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self.source.items(self._stop):
                with self._cond:
                    if isinstance(item, Notice):
                        self._notices.append(item)
                    else:
                        if self.source.paced:
                            self._cond.wait_for(lambda: self._frame is None or self._stop.is_set())
                        if self._stop.is_set():
                            return
                        if self._frame is not None:
                            self._replaced += 1
                        self._frame = item
                    self._cond.notify_all()
                if self._stop.is_set():
                    return
        except Lfm2EdgeError as exc:
            with self._cond:
                self._notices.append(Notice("fatal", str(exc)))
        except Exception as exc:
            with self._cond:
                self._notices.append(Notice("fatal", f"{self.source.name}: {type(exc).__name__}: {exc}"))
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def take(self, timeout: float) -> tuple[Frame, int] | Notice | object | None:
        """The next notice, else the latest frame and how many frames it replaced, else
        :data:`END` once the source is over and drained, else None after ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: self._notices or self._frame is not None or self._ended, timeout)
            if self._notices:
                return self._notices.popleft()
            if self._frame is not None:
                frame, replaced = self._frame, self._replaced
                self._frame, self._replaced = None, 0
                self._cond.notify_all()
                return frame, replaced
            return END if self._ended else None

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.source.interrupt()
        if self.source.interruptible:
            self._thread.join(timeout=5)

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
