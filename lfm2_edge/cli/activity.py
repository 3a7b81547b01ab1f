"""The command line's stderr spinner, and Ctrl-C as a request to stop."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["Activity"]


class Activity:
    """One long step of the command line (loading a model, answering): a spinner on
    stderr saying what is happening, and Ctrl-C turned into a request to stop.

    The spinner is drawn only when ``show`` (stderr is a terminal); otherwise nothing is
    written. While active, SIGINT sets :attr:`interrupted` instead of raising: llama.cpp
    and mtmd run for seconds inside C calls (the vision encoder), where Python's own
    handler cannot run, and a ``KeyboardInterrupt`` raised in a ctypes callback is lost.
    :meth:`check` (called between prompt chunks by the model's ``on_progress`` hook, and
    between answer pieces by the caller) raises ``KeyboardInterrupt`` once it is set, so
    an answer stops after the chunk being evaluated. A second Ctrl-C raises at once.
    """

    def __init__(self, console: Any, *, show: bool) -> None:
        self.console = console
        self.show = show
        self.interrupted = False
        self._status: Any = None
        self._previous: Any = None

    def __enter__(self) -> Activity:
        self.interrupted = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        self.done()
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted:  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        self.interrupted = True
        self.say("stopping…")

    def check(self) -> None:
        if self.interrupted:
            raise KeyboardInterrupt

    def say(self, text: str) -> None:
        """Show ``text`` beside the spinner (started on first use)."""
        if not self.show:
            return
        if self._status is None:
            self._status = self.console.status(text, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def done(self) -> None:
        """Take the spinner off the screen (before the answer's first piece is written)."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def on_progress(self, stage: str, done: int, total: int) -> None:
        """The model's progress hook: ``("image", i, n)`` before tile i of n is encoded,
        ``("prefill", i, n)`` before a batch of prompt tokens."""
        self.check()
        if stage == "image":
            self.say(f"encoding the image: tile {done + 1} of {total}")
        elif stage == "prefill" and total >= 64:  # not the few tokens between two tiles
            self.say(f"reading the prompt: {done} of {total} tokens")
