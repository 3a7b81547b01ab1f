"""The interactive session of ``lfm2-edge chat`` (without ``--prompt``), shaped after
``ollama run``.

At a terminal: line editing and history (readline, kept in
``$XDG_STATE_HOME/lfm2-edge/history``), a paste of several lines is one message
(bracketed paste), ``\"\"\"`` opens and closes a multi-line message, and an image path
typed or dropped into a message (``~/x.jpg``, ``'/a/my cat.jpg'``, ``/a/my\\ cat.jpg``)
attaches that image. Commands: ``/?`` ``/help``, ``/image PATH``, ``/set``, ``/show``,
``/clear`` (``/reset``), ``/bye`` (``/exit``). Ctrl-C stops an answer (also while an
image is being encoded) or clears the line; Ctrl-D or ``/bye`` ends the session.

With stdin not a terminal (``printf 'hi\\n' | lfm2-edge chat``) nothing but answers is
written to stdout: no banner, no prompts; each line is a message.

When the conversation outgrows the context the oldest turns are dropped, with one line
on stderr; an error on one turn is one ``error: ...`` line and the session goes on.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from lfm2_edge.chat.images import load_image
from lfm2_edge.chat.sampling import check_value
from lfm2_edge.chat.session import ChatSession
from lfm2_edge.cli.activity import Activity
from lfm2_edge.cli.answer import ThoughtBlock, answer_stats
from lfm2_edge.errors import ContextOverflowError, Lfm2EdgeError

__all__ = ["HELP", "extract_image_paths", "find_image_paths", "interactive"]

HELP = """Available commands:
  /image PATH...     Attach images to your next message (or type or drop a path into it)
  /set PARAM VALUE   Set temperature, top_p, top_k, min_p, repetition_penalty, seed, max_tokens
                     (also ollama's /set parameter PARAM VALUE)
  /set system TEXT   Set the system prompt (/set verbose, /set quiet: per-answer rates on or off)
  /show              Show the model, the conversation, the settings and the last answer's figures
  /clear             Forget the conversation and waiting images (also /reset)
  /bye               Exit (also /exit, Ctrl+D)
  /?, /help          This help

Use \"\"\" to begin and end a multi-line message. Ctrl+C stops an answer."""

EXIT_HINT = "Use Ctrl+D or /bye to exit."

_SETTABLE: dict[str, Callable[[str], Any]] = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "repetition_penalty": float,
    "seed": int,
    "max_tokens": int,
}
_ALIASES = {"repeat_penalty": "repetition_penalty", "num_predict": "max_tokens", "topp": "top_p", "topk": "top_k"}

_IMAGE_EXT = r"\.(?:jpe?g|png|webp|gif|bmp|tiff?|heic)"
# a quoted path, or a run of non-space characters where "\ " is a space (how terminals
# paste a dropped file), ending in an image extension, maybe followed by punctuation
# that ends the sentence ("what is ~/cat.jpg?"); a file:// URI is one such run
_PATH_RE = re.compile(
    rf"""'([^']+{_IMAGE_EXT})'|"([^"]+{_IMAGE_EXT})"|((?:\\.|[^\s'"\\])+?{_IMAGE_EXT})(?=[?!.,;:)\]]*(?:\s|$))""",
    re.IGNORECASE,
)


def _trim_notice(n: int) -> str:
    return f"(context full: dropped the {'oldest turn' if n == 1 else f'{n} oldest turns'})"


def _expand(path: str) -> Path:
    return Path(os.path.expanduser(os.path.expandvars(path)))


def _path_of(raw: str) -> str:
    """A typed path as a file name: a ``file://`` URI decoded (``%20`` is a space)."""
    if raw.lower().startswith("file://"):
        parsed = urllib.parse.urlsplit(raw)
        return urllib.parse.unquote(parsed.path)
    return raw


def _looks_like_path(raw: str) -> bool:
    """Whether a word is meant as a file (``~/x.jpg``, ``./x.jpg``, ``/a/x.jpg``,
    ``file://...``), not a file name talked about (``is photo.jpg or photo.png better?``)."""
    return "/" in raw or raw.startswith("~")


def find_image_paths(text: str) -> tuple[str, list[Path], list[str]]:
    """The message with the paths of existing image files taken out, those paths, and
    the words that look like image paths (with a ``/`` or a ``~``) but name no file."""
    found: list[Path] = []
    missing: list[str] = []

    def take(m: re.Match[str]) -> str:
        raw = m.group(1) or m.group(2) or re.sub(r"\\(.)", r"\1", m.group(3))
        path = _expand(_path_of(raw))
        if path.is_file():
            found.append(path)
            return ""
        if _looks_like_path(raw):
            missing.append(raw)
        return m.group(0)

    rest = _PATH_RE.sub(take, text)
    return (" ".join(rest.split()) if found else text), found, missing


def extract_image_paths(text: str) -> tuple[str, list[Path]]:
    """The message with the paths of existing image files taken out, and those paths.

    Paths may be quoted, have ``\\ `` for spaces, start with ``~``, be ``file://`` URIs
    or end a sentence (``~/cat.jpg?``); a path-like word that names no file stays in the
    text (:func:`find_image_paths` also returns those)."""
    rest, found, _ = find_image_paths(text)
    return rest, found


def _image_args(rest: str) -> list[str]:
    try:
        return shlex.split(rest)
    except ValueError:  # an unbalanced quote: take the text as one path
        return [rest.strip().strip("'\"")]


class _Reader:
    """Where messages come from: readline at a terminal, plain lines otherwise."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.history: Path | None = None
        if tty:
            try:
                import readline
            except ImportError:  # Windows without pyreadline: input() still works
                return
            readline.parse_and_bind("set enable-bracketed-paste on")  # a paste is one message
            state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
            self.history = state / "lfm2-edge" / "history"
            with contextlib.suppress(OSError):
                readline.read_history_file(self.history)
            readline.set_history_length(1000)

    def save(self) -> None:
        if self.history is None:
            return
        import readline

        with contextlib.suppress(OSError):
            self.history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(self.history)

    def line(self, prompt: str) -> str:
        """One line (raises EOFError at the end, KeyboardInterrupt on Ctrl-C)."""
        if self.tty:
            return input(prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def message(self) -> str:
        """One message: a line, a bracketed paste, or a \"\"\"-delimited block."""
        text = self.line(">>> ")
        if not text.lstrip().startswith('"""'):
            return text
        body = text.lstrip()[3:]
        if body.rstrip().endswith('"""') and body.strip():
            return body.rstrip()[:-3]
        lines = [body] if body else []
        while True:
            more = self.line("... ")
            if more.rstrip().endswith('"""'):
                lines.append(more.rstrip()[:-3])
                return "\n".join(lines)
            lines.append(more)


class Repl:
    def __init__(
        self,
        vm: Any,
        images: list[Any],
        sampling: dict[str, Any],
        *,
        label: str,
        verbose: bool,
        load_s: float | None,
        hide_thinking: bool = False,
    ) -> None:
        self.vm = vm
        self.hide_thinking = hide_thinking
        self.label = label
        self.sampling = dict(sampling)
        self.verbose = verbose
        self.load_s = load_s
        self.tty = sys.stdin.isatty()
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.session = ChatSession(vm, on_trim=lambda n: self.err.print(f"[dim]{_trim_notice(n)}[/]"))
        self.pending: list[Any] = list(images)
        self.last: Any = None

    def note(self, text: str) -> None:
        """A remark for the user: on stderr, so stdout holds only answers."""
        self.err.print(f"[dim]{escape(text)}[/]")

    def error(self, text: str) -> None:
        self.err.print(f"[bold red]error:[/] {escape(text)}")

    def run(self) -> None:
        reader = _Reader(self.tty)
        if self.tty:
            self.note(f"{self.label}: type a message, /? for help. {EXIT_HINT}")
        try:
            while True:
                try:
                    text = reader.message()
                except EOFError:
                    if self.tty:
                        self.err.print()
                    return
                except KeyboardInterrupt:  # at the prompt: a fresh line, as a shell does
                    self.err.print()
                    self.note(EXIT_HINT)
                    continue
                try:
                    if self.command(text.strip()) is False:
                        return
                except Lfm2EdgeError as exc:  # a bad command is one line; the session goes on
                    self.error(str(exc))
        finally:
            reader.save()

    def command(self, text: str) -> bool | None:
        """Handle one message or command; ``False`` ends the session."""
        if not text:
            return None
        name, _, rest = text.partition(" ")
        if not re.fullmatch(r"/[A-Za-z?]+", name):  # a message, or a path such as /home/me/cat.jpg
            self.message(text)
            return None
        rest = rest.strip()
        if name in ("/bye", "/exit", "/quit"):
            return False
        if name in ("/?", "/help"):
            self.out.print(HELP, markup=False) if self.tty else self.err.print(HELP, markup=False)
        elif name in ("/clear", "/reset"):
            self.session.reset()
            self.pending.clear()
            self.note("conversation cleared")
        elif name == "/image":
            self.add_images(rest)
        elif name == "/set":
            self.set(rest)
        elif name == "/show":
            self.show()
        else:
            self.note(f"unknown command {name}; /? lists the commands")
        return None

    def add_images(self, rest: str) -> None:

        paths = _image_args(rest)
        if not paths:
            self.error("/image needs a path: /image ~/Pictures/cat.jpg (quote a path with spaces)")
            return
        for raw in paths:
            try:
                self.pending.append(load_image(str(_expand(raw)), allow_private=True))
            except Lfm2EdgeError as exc:
                self.error(str(exc))
                return
        self.note(f"image added ({len(self.pending)} waiting for your next message)")

    def set(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        if key == "parameter":  # ollama's spelling: /set parameter temperature 0.5
            key, _, value = value.strip().partition(" ")
        key = _ALIASES.get(key, key)
        value = value.strip()
        if key == "system":
            if not value:
                self.error("/set system needs the text of the system prompt")
                return
            self.session.system = value
            body = [m for m in self.session.messages if m.get("role") != "system"]
            self.session.messages = [{"role": "system", "content": value}, *body]
            self.note("system prompt set")
        elif key in ("verbose", "quiet"):
            self.verbose = key == "verbose"
            self.note(f"per-answer rates {'on' if self.verbose else 'off'}")
        elif key in _SETTABLE:
            try:
                number = _SETTABLE[key](value)
            except ValueError:
                self.error(f"/set {key} needs a number (got {value!r})")
                return
            try:  # the range and finiteness checks every chat call makes
                self.sampling[key] = check_value(key, number)
            except Lfm2EdgeError as exc:
                self.error(f"/set {key}: {exc}; {key} stays {self._current(key)}")
                return
            self.note(f"set {key} to {self.sampling[key]}")
        else:
            self.error(f"/set takes one of: {', '.join([*_SETTABLE, 'system', 'verbose', 'quiet'])}")

    def _current(self, key: str) -> Any:
        if self.sampling.get(key) is not None:
            return self.sampling[key]
        defaults = getattr(self.vm, "sampling", None)
        return getattr(defaults, key, "the model's default")

    def show(self) -> None:
        vm = self.vm
        lines = [("model", self.label)]
        if getattr(vm, "model_path", None) is not None:
            lines.append(("file", str(vm.model_path)))
        if hasattr(vm, "n_ctx"):
            lines.append(("context", f"{vm.n_ctx} tokens, {vm.n_threads} threads on {vm.device}"))
        defaults = getattr(vm, "sampling", None)
        current = defaults.updated(**self.sampling) if defaults is not None else None
        if current is not None:
            shown = {k: v for k, v in asdict(current).items() if k != "stop"}
            lines.append(("settings", ", ".join(f"{k} {v}" for k, v in shown.items())))
        system = self.session.system if self.session.system is not None else getattr(vm, "system_prompt", None)
        lines.append(("system", repr(system)))
        turns = sum(1 for m in self.session.messages if m.get("role") == "user")
        lines.append(("conversation", f"{turns} turn(s) kept, {self.session.dropped_turns} dropped for room"))
        if self.pending:
            lines.append(("waiting", f"{len(self.pending)} image(s) for your next message"))
        if self.last is not None:
            u, t = self.last.usage, self.last.timings
            lines.append(
                (
                    "last answer",
                    f"prompt {u.prompt_tokens} tokens ({u.image_tokens} image tokens, {u.cached_tokens} from the "
                    f"state cache), {u.image_encodes} image tile(s) encoded, {u.completion_tokens} tokens out; "
                    f"first token after {t.first_token_ms / 1000:.2f}s, {t.decode_tok_s(u):.1f} tokens/s",
                )
            )
        if hasattr(vm, "image_encodes"):
            lines.append(("image encodes", f"{vm.image_encodes} tile(s) so far this session"))
        shown_on = self.out if self.tty else self.err  # piped: stdout holds only answers
        for k, v in lines:
            shown_on.print(f"[bold]{k}[/]: {escape(v)}")

    def message(self, text: str) -> None:

        text, paths, missing = find_image_paths(text)
        if missing:  # a typed path to no file: say so rather than send it as words
            self.error(f"no image file at {missing[0]}; the message was not sent (check the path)")
            return
        for path in paths:
            try:
                self.pending.append(load_image(str(path), allow_private=True))
            except Lfm2EdgeError as exc:
                self.error(str(exc))
                return
        if paths:
            self.note(f"added image {', '.join(p.name for p in paths)}")
        if not text:  # only a path: the image waits for the question
            self.note(f"{len(self.pending)} image(s) waiting for your next message")
            return
        images, self.pending = self.pending, []
        self.answer(text, images)

    def answer(self, text: str, images: list[Any]) -> None:
        """Stream one answer to stdout. Ctrl-C stops it; an error is one line; the session
        goes on either way (and neither turn is kept in the history)."""
        activity = Activity(self.err, show=self.err.is_terminal)
        stream = None
        wrote = False
        start = time.perf_counter()
        if hasattr(self.vm, "on_progress"):
            self.vm.on_progress = activity.on_progress
        try:
            with activity:
                activity.say("thinking…")
                thought = ThoughtBlock(self.err, activity, show=not self.hide_thinking)
                try:
                    stream = self.session.send(text, images, stream=True, **self.sampling)
                    stream.on_thought = thought.write
                    for piece in stream:
                        activity.done()
                        thought.close()
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                        wrote = True
                        activity.check()
                    thought.close()  # an answer that was all thought
                except KeyboardInterrupt:
                    if stream is not None:
                        stream.close()
                    activity.done()
                    thought.close()
                    sys.stdout.write("\n")
                    sys.stdout.flush()
                    self.note("(stopped)")
                    return
        except KeyboardInterrupt:  # a second Ctrl-C, between two checks
            self.note("(stopped)")
            return
        except Exception as exc:  # one turn's failure must not end the session
            sys.stdout.write("\n" if wrote else "")
            sys.stdout.flush()
            message = str(exc) if isinstance(exc, Lfm2EdgeError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ContextOverflowError):
                message += " (/clear starts a new conversation; --ctx gives a larger context)"
            self.error(message)
            return
        finally:
            if hasattr(self.vm, "on_progress"):
                self.vm.on_progress = None
        sys.stdout.write("\n")
        sys.stdout.flush()
        self.last = stream.result if stream is not None else None
        if self.verbose and self.last is not None:
            self.err.print(answer_stats(self.last, time.perf_counter() - start, self.load_s), markup=False)
            self.load_s = None


def interactive(
    vm: Any,
    images: list[Any],
    sampling: dict[str, Any],
    *,
    label: str = "lfm2-edge",
    verbose: bool = False,
    load_s: float | None = None,
    hide_thinking: bool = False,
) -> None:
    """Chat with ``vm`` from stdin until ``/bye`` or end of input."""
    Repl(vm, images, sampling, label=label, verbose=verbose, load_s=load_s, hide_thinking=hide_thinking).run()
