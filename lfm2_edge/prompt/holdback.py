"""Holding back streamed text that may turn out not to be text.

A stream must never show a stop string it is about to cut, nor the tool-call markup
that becomes ``tool_calls``. Both are the same problem: text is released as it comes,
except a tail that could be the start of a marker; once a marker is complete, the text
is cut there (a stop string) or everything from it on is withheld (a tool call).
:class:`HoldBack` does both, for the local models' stop strings and the server's
tool-call deltas alike.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["HoldBack"]


class HoldBack:
    """Release streamed text, holding back what may belong to a marker.

    * ``stops``: text from a stop string on is dropped and the stream ends
      (:meth:`feed` reports it).
    * ``withhold``: text from such a marker on is kept out of the released text (it is
      still in :attr:`text`), and so is everything after it.
    * ``hold_all``: release nothing until :meth:`finish` (a forced tool call).
    """

    def __init__(self, stops: Sequence[str] = (), withhold: Sequence[str] = (), *, hold_all: bool = False) -> None:
        self.stops = [s for s in stops if s]
        self.withhold = [m for m in withhold if m]
        self.hold_all = hold_all
        self._tail = max((len(m) for m in (*self.stops, *self.withhold)), default=1) - 1
        self.text = ""  # everything fed, up to a stop string
        self.released = 0  # how much of text has been handed out
        self.withheld_at: int | None = None  # where a withhold marker starts, once seen

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add ``piece``; returns (text safe to show now, whether a stop string ended it)."""
        start = max(0, len(self.text) - self._tail)
        self.text += piece
        for stop in self.stops:
            at = self.text.find(stop, start)
            if at != -1:
                self.text = self.text[:at]
                return self._release(len(self.text)), True
        if self.withheld_at is None:
            found = [at for m in self.withhold if (at := self.text.find(m, start)) != -1]
            if found:
                self.withheld_at = min(found)
        return self._release(len(self.text) - self._tail), False

    def finish(self) -> str:
        """The rest of the text that may be shown, once the stream is over."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if self.hold_all:
            return ""
        if self.withheld_at is not None:
            upto = min(upto, self.withheld_at)
        if upto <= self.released:
            return ""
        out = self.text[self.released : upto]
        self.released = upto
        return out

    @property
    def rest(self) -> str:
        """The text not released: the withheld part (from a marker on), or all of it."""
        return self.text[self.released :]
