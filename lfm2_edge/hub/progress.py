"""Download progress bars drawn by rich, in the shape ``huggingface_hub``'s ``http_get`` wants."""

from __future__ import annotations

from typing import Any

__all__ = ["RichProgress"]


class RichProgress:
    """Download bars drawn by rich on stderr, one per file, in the shape ``http_get`` wants
    of a ``tqdm_class`` (made with ``desc``/``total``/``initial``, used as a context manager)."""

    def __init__(self, console: Any | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)

    def __call__(self, *, desc: str = "", total: int | None = None, initial: int = 0, **_: Any) -> _RichBar:
        return _RichBar(self.console, desc, total, initial)


class _RichBar:
    def __init__(self, console: Any, desc: str, total: int | None, initial: int) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(desc, total=total, completed=initial)

    def __enter__(self) -> _RichBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()
