"""The interactive session, driven as a user drives it: piped, and at a terminal (a pty)."""

from __future__ import annotations

import dataclasses
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lfm2_edge.cli.repl import extract_image_paths, find_image_paths
from lfm2_edge.testing import SHAPES, make_synthetic_model
from tests.helpers import noise_image

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` skips this module

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm"}


def _sigint_default() -> None:
    # a shell's background job ignores SIGINT, and Python keeps an ignored SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lfm2_edge.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or ENV,
        preexec_fn=_sigint_default,
    )


def session_args(tiny: dict[str, Path], *extra: str) -> list[str]:
    return [
        "chat",
        str(tiny["F16"]),
        "--mmproj",
        str(tiny["mmproj"]),
        "--max-tokens",
        "4",
        "--temperature",
        "0",
        *extra,
    ]


@pytest.fixture(scope="module")
def pics(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    (home / "Pictures").mkdir()
    noise_image(320, 240).save(home / "Pictures" / "my cat.jpg")
    return home


# -- image paths in a message ---------------------------------------------------------


def test_image_paths_are_found_however_they_are_pasted(pics: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(pics))
    cat = pics / "Pictures" / "my cat.jpg"
    for typed in (
        "'~/Pictures/my cat.jpg' what is it?",  # drag and drop in GNOME Terminal
        f'"{cat}" what is it?',
        r"~/Pictures/my\ cat.jpg what is it?",  # drag and drop in macOS Terminal / iTerm2
        f"what is it? '{cat}'",
    ):
        text, paths = extract_image_paths(typed)
        assert paths == [cat], typed
        assert text == "what is it?", typed
    assert extract_image_paths("is ~/missing.jpg a file?") == ("is ~/missing.jpg a file?", [])


def test_image_paths_ending_a_sentence_and_file_uris(pics: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(pics))
    cat = pics / "Pictures" / "my cat.jpg"
    plain = pics / "Pictures" / "cat.jpg"
    plain.write_bytes(cat.read_bytes())
    assert find_image_paths("what is ~/Pictures/cat.jpg?") == ("what is ?", [plain], [])
    assert find_image_paths("look at ~/Pictures/cat.jpg, then tell me.")[1] == [plain]
    uri = "file://" + str(cat).replace(" ", "%20")  # how a file manager copies a file
    assert find_image_paths(f"{uri} what is it?") == ("what is it?", [cat], [])
    assert find_image_paths("is ~/Pictures/dog.jpg here?") == (
        "is ~/Pictures/dog.jpg here?",
        [],
        ["~/Pictures/dog.jpg"],
    )
    # a file name talked about, not a path: no complaint
    assert find_image_paths("is photo.jpg or photo.png better?") == ("is photo.jpg or photo.png better?", [], [])


# -- piped stdin ------------------------------------------------------------------------


def test_piped_session_writes_only_answers_to_stdout(tiny: dict[str, Path], pics: Path) -> None:
    script = (
        "hello\n/help\n/image\n/image '~/Pictures/my cat.jpg'\nwhat is it?\n"
        "~/Pictures/my\\ cat.jpg and this?\n/show\n/set temperature x\n/set max_tokens 2\n/bogus\n/clear\n/bye\n"
    )
    proc = start(*session_args(tiny), env={**ENV, "HOME": str(pics)})
    out, errs = proc.communicate(script, timeout=120)
    assert proc.returncode == 0, errs
    assert ">>>" not in out and "/? for help" not in out and "/? for help" not in errs  # no banner, no prompts
    assert "/image PATH" in errs and "/set PARAM VALUE" in errs  # /help, on stderr when piped
    assert "/image needs a path" in errs
    assert "is a directory" not in errs
    assert errs.count("image added (1 waiting") == 1
    assert "added image my cat.jpg" in errs
    assert "/show" not in out and "last answer: prompt" not in out  # /show is a remark: on stderr when piped
    assert "last answer: prompt" in errs and "image tokens" in errs
    assert "/set temperature needs a number" in errs and "set max_tokens to 2" in errs
    assert "unknown command /bogus; /? lists the commands" in errs
    assert "conversation cleared" in errs
    assert "Traceback" not in errs


def test_a_bad_set_is_one_line_and_the_session_goes_on(tiny: dict[str, Path]) -> None:
    script = (
        "/set temperature -1\n/show\n/set temperature 1e400\n/set top_k 2.5\n"
        "/set parameter temperature 0.5\n/set parameter num_predict 3\n/show\nhi\n/bye\n"
    )
    proc = start(*session_args(tiny))
    out, errs = proc.communicate(script, timeout=120)
    assert proc.returncode == 0, errs
    assert "Traceback" not in errs
    assert "error: /set temperature: temperature must be between 0 and 2, not -1.0; temperature stays" in errs
    assert "error: /set temperature: temperature must be a number between 0 and 2, not inf" in errs
    assert "error: /set top_k needs a number (got '2.5')" in errs
    assert "set temperature to 0.5" in errs and "set max_tokens to 3" in errs  # ollama's spelling
    assert "temperature 0.5" in errs.rsplit("settings:", 1)[1]  # the last /show has it
    assert out.strip()  # and "hi" was answered


def test_a_typed_path_to_no_file_is_one_line(tiny: dict[str, Path], pics: Path) -> None:
    script = "what is ~/Pictures/dog.jpg?\nwhat is ~/Pictures/my\\ cat.jpg?\n/bye\n"
    proc = start(*session_args(tiny), env={**ENV, "HOME": str(pics)})
    out, errs = proc.communicate(script, timeout=120)
    assert proc.returncode == 0, errs
    assert "error: no image file at ~/Pictures/dog.jpg; the message was not sent (check the path)" in errs
    assert "added image my cat.jpg" in errs  # a path ending the question is an image
    assert len(out.strip().splitlines()) >= 1


def test_prompt_dash_reads_stdin(tiny: dict[str, Path]) -> None:
    args = session_args(tiny, "-p", "-", "--json")
    piped = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", *args], input="what is this?\n", capture_output=True, text=True, env=ENV
    )
    typed = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", *session_args(tiny, "-p", "what is this?", "--json")],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert piped.returncode == 0, piped.stderr
    assert '"text"' in piped.stdout
    import json

    # the same prompt: the same greedy answer and prompt length ("-" would be 1 token)
    a, b = json.loads(piped.stdout), json.loads(typed.stdout)
    assert a["usage"]["prompt_tokens"] == b["usage"]["prompt_tokens"] and a["text"] == b["text"]


def test_ctrl_c_stops_the_answer_not_the_session(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The random model ends its answers after a few hundred tokens (a few ms); a schema
    that wants 5000 numbers keeps it writing for seconds, so Ctrl-C lands mid-answer."""
    schema = tmp_path / "long.json"
    schema.write_text('{"type": "array", "items": {"type": "integer"}, "minItems": 5000}')
    args = ["chat", str(tiny["F16"]), "--max-tokens", "2000", "--temperature", "0", "--schema", str(schema)]
    proc = start(*args, "--threads", "1")
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("tell me everything\n")
    proc.stdin.flush()
    proc.stdout.read(8)  # the answer has started streaming
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate("and now?\n/bye\n", timeout=120)
    assert proc.returncode == 0 and "Traceback" not in errs, errs
    assert "(stopped)" in errs
    _first, second = out.split("\n", 1)
    assert len(second) > 100  # the session went on: a second answer


def test_an_overflow_keeps_the_session(tiny: dict[str, Path]) -> None:
    script = "".join(f"question number {i}, {'and more words ' * 10}\n" for i in range(8))
    script += "x " * 400 + "\n" + "still there?\n/bye\n"
    proc = start("chat", str(tiny["F16"]), "--ctx", "256", "--max-tokens", "24", "--temperature", "0")
    out, errs = proc.communicate(script, timeout=120)
    assert proc.returncode == 0, errs
    assert "(context full: dropped the oldest turn" in errs
    assert "/clear starts a new conversation" in errs  # the turn that fits not even alone
    assert len(out.strip().splitlines()) >= 9  # every other question was answered


# -- Ctrl-C while an image is encoded -------------------------------------------------


@pytest.fixture(scope="module")
def slow_vision(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny language model with a vision encoder heavy enough that one tile takes
    seconds on a small CPU, and an image of 6 tiles and a thumbnail."""
    tiny = SHAPES["tiny"]
    vision = dataclasses.replace(tiny.vision, n_embd=512, n_ff=2048, n_head=8, n_layer=6)
    shape = dataclasses.replace(tiny, name="tiny-slow-vision", vision=vision)
    out = tmp_path_factory.mktemp("slow")
    files = make_synthetic_model(out, shape, quants=[])
    noise_image(1536, 1024).save(out / "big.jpg")
    return {**files, "image": out / "big.jpg"}


def _encode_args(m: dict[str, Path]) -> list[str]:
    return ["chat", str(m["F16"]), "--mmproj", str(m["mmproj"]), "--max-tokens", "4", "--threads", "1"]


def test_ctrl_c_while_encoding_stops_a_one_shot_answer(slow_vision: dict[str, Path]) -> None:
    proc = start(*_encode_args(slow_vision), "-i", str(slow_vision["image"]), "-p", "what is it?")
    time.sleep(3)  # loaded, encoding the first tiles
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _out, errs = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 130, errs
    assert "Exception ignored" not in errs and "KeyboardInterrupt" not in errs, errs
    assert "(stopped)" in errs
    assert took < 15, took  # after the tile being encoded, not after all seven


def test_ctrl_c_while_encoding_keeps_the_session(slow_vision: dict[str, Path]) -> None:
    proc = start(*_encode_args(slow_vision))
    assert proc.stdin is not None
    proc.stdin.write(f"{slow_vision['image']} what is it?\n")
    proc.stdin.flush()
    time.sleep(3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    _out, errs = proc.communicate("hello\n/show\n/bye\n", timeout=120)
    assert proc.returncode == 0, errs
    assert time.monotonic() - t0 < 20
    assert "Exception ignored" not in errs and "(stopped)" in errs, errs
    assert "conversation: 1 turn(s) kept" in errs  # the stopped turn is not in the history


# -- at a terminal ----------------------------------------------------------------------


class Terminal:
    """The session on a pseudo-terminal, as a user at a terminal meets it."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lfm2_edge.cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            preexec_fn=_sigint_default,
            close_fds=True,
        )
        os.close(slave)
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} not in {self.seen[-800:]!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode("utf-8", "replace")
                except OSError:  # the process is gone
                    break
        assert re.search(pattern, self.seen), self.seen[-800:]
        return self.seen

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def mark(self) -> None:
        self.seen = ""


def test_terminal_history_paste_and_ctrl_c_at_the_prompt(tiny: dict[str, Path], tmp_path: Path) -> None:
    env = {**ENV, "XDG_STATE_HOME": str(tmp_path)}
    term = Terminal(session_args(tiny, "-v"), env)
    term.expect(r"/\? for help\. Use Ctrl\+D or /bye to exit\.")
    term.expect(">>> ")
    term.mark()
    term.send("first question\r")
    term.expect(r"eval rate:.*\n[\s\S]*>>> ")  # -v: the per-answer figures
    term.mark()
    term.send("\x1b[A")  # Up: the last line comes back
    term.expect("first question")
    term.send("\x15")  # Ctrl-U clears it
    term.mark()
    # a paste of three lines (bracketed, as terminals paste) is one message: one answer
    term.send("\x1b[200~line one\nline two\nline three\x1b[201~\r")
    screen = term.expect(r"eval rate[\s\S]*>>> ")
    assert screen.count("total duration") == 1, screen
    term.mark()
    term.send('"""\rtwo\rlines"""\r')  # a multi-line message, as in ollama
    term.expect(r"\.\.\. ")
    term.expect(r"eval rate[\s\S]*>>> ")
    term.mark()
    time.sleep(0.5)  # a person's pause: the prompt is drawn before readline waits for keys
    term.proc.send_signal(signal.SIGINT)  # Ctrl-C at the prompt: a hint, not the end
    term.expect("Use Ctrl\\+D or /bye to exit")
    term.send("/bye\r")
    assert term.proc.wait(timeout=30) == 0
    assert "first question" in (tmp_path / "lfm2-edge" / "history").read_text()
