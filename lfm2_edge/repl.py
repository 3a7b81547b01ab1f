"""The interactive session of ``lfm2-edge chat`` (without ``--prompt``).

A line is a message; ``/image PATH`` adds an image to the next one, ``/reset`` forgets
the conversation, ``/exit`` (or end of input) quits. Ctrl-C stops an answer, not the
session. When the conversation outgrows the context the oldest turns are dropped, with
one line on stderr; an error on one turn is one ``error: ...`` line and the session goes
on. The session only ends at ``/exit``, end of input or Ctrl-C at the prompt, with
exit code 0.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console

from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.session import ChatSession

__all__ = ["HELP", "interactive"]

HELP = (
    "Commands: /image PATH adds an image to your next message, /reset forgets the conversation "
    "(and any waiting images), /exit quits."
)


def _trim_notice(n: int) -> str:
    return f"(context full: dropped the {'oldest turn' if n == 1 else f'{n} oldest turns'})"


def interactive(vm: Any, images: list[Any], sampling: dict[str, Any]) -> None:
    """Chat with ``vm`` line by line from stdin until ``/exit`` or end of input."""
    from lfm2_edge.images import load_image

    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    out.print(f"[dim]{HELP} Ctrl-C stops an answer.[/]")
    session = ChatSession(vm, on_trim=lambda n: err.print(f"[dim]{_trim_notice(n)}[/]"))
    pending = list(images)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            pending.clear()
            out.print("[dim]conversation cleared[/]")
            continue
        if text.startswith("/image"):
            ref = text[len("/image") :].strip()
            try:
                pending.append(load_image(ref, allow_private=True))
            except Lfm2EdgeError as exc:
                err.print(f"[bold red]error:[/] {exc}")
                continue
            out.print(f"[dim]image added ({len(pending)} waiting for your next message)[/]")
            continue
        if text.startswith("/"):
            out.print(f"[dim]unknown command {text.split()[0]}. {HELP}[/]")
            continue
        _answer(session, text, pending, sampling, out, err)
        pending = []


def _answer(
    session: ChatSession, text: str, images: list[Any], sampling: dict[str, Any], out: Console, err: Console
) -> None:
    """Stream one answer to stdout; Ctrl-C stops it and an error is one line, and the
    session goes on either way (neither turn is kept in the history)."""
    stream = None
    try:
        stream = session.send(text, images, stream=True, **sampling)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        if stream is not None:
            stream.close()
        out.print("\n[dim](stopped)[/]")
    except Exception as exc:  # one turn's failure must not end the session
        sys.stdout.write("\n")
        sys.stdout.flush()
        message = str(exc) if isinstance(exc, Lfm2EdgeError) else f"{type(exc).__name__}: {exc}"
        err.print(f"[bold red]error:[/] {message}")
        return
    sys.stdout.write("\n")
