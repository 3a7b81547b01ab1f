"""A model's lifecycle: close, streams left early, threads, and the cheap context check.

Scenarios that crashed (abort, SIGSEGV) or deadlocked run in a child process, so a
failure shows as an exit code or a timeout instead of taking pytest down with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lfm2_edge import ContextOverflowError, VisionModel

GREEDY = {"temperature": 0, "max_tokens": 12}
ROOT = Path(__file__).resolve().parents[2]

_PRELUDE = """
import sys, threading, time
from PIL import Image
from lfm2_edge import VisionModel, ModelClosedError
F16, MMPROJ = sys.argv[1], sys.argv[2]
IMAGE = Image.new("RGB", (64, 64), (200, 30, 30))
def load():
    return VisionModel(F16, MMPROJ, n_ctx=2048)
def expect_closed(call):
    try:
        call()
    except ModelClosedError as exc:
        assert "closed" in str(exc), exc
    else:
        raise AssertionError("no ModelClosedError")
"""


def _child(tiny: dict[str, Path], body: str, timeout: float = 90) -> None:
    """Run ``body`` (after :data:`_PRELUDE`) in a fresh interpreter; it must print ``OK``."""
    code = _PRELUDE + textwrap.dedent(body) + "\nprint('OK', flush=True)\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tiny["F16"]), str(tiny["mmproj"])],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the scenario hung (killed after {timeout} s): {exc.stdout!r} {exc.stderr!r}")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), (
        f"exit code {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
    )


# -- 1. a closed model ----------------------------------------------------------------


def test_every_call_on_a_closed_model_raises_model_closed_error(tiny: dict[str, Path]) -> None:
    _child(
        tiny,
        """
        m = load()
        assert m.chat("hi", max_tokens=2).text is not None
        m.close()
        m.close()  # idempotent
        expect_closed(lambda: m.chat("hi"))
        expect_closed(lambda: m.chat("hi", images=[IMAGE]))  # not "loaded without an mmproj"
        expect_closed(lambda: m.chat("hi", stream=True))
        expect_closed(m.reset)
        with load() as m2:
            m2.chat("hi", max_tokens=2)
        expect_closed(lambda: m2.chat("hi"))
        m2.close()
        """,
    )


def test_close_from_another_thread_mid_stream(tiny: dict[str, Path]) -> None:
    _child(
        tiny,
        """
        # the stream is driven by the main thread; another thread closes the model
        m = load()
        s = m.chat("Tell a long story.", stream=True, temperature=0, max_tokens=400)
        first = next(s)
        t = threading.Thread(target=m.close, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "close() hung"
        rest = list(s)  # the stream ends: it never touches the freed model
        assert s.result is not None and s.result.finish_reason == "stop"
        assert s.result.text.startswith(first + "".join(rest))
        expect_closed(lambda: m.chat("hi"))

        # the stream is driven by another thread, token after token, while main closes
        m = load()
        pieces = []
        errors = []
        def drive():
            try:
                for piece in m.chat("Tell a long story.", stream=True, temperature=0, max_tokens=400):
                    pieces.append(piece)
            except BaseException as exc:
                errors.append(exc)
        t = threading.Thread(target=drive, daemon=True)
        t.start()
        deadline = time.monotonic() + 30
        while not pieces and time.monotonic() < deadline:
            time.sleep(0.001)
        m.close()
        t.join(30)
        assert not t.is_alive() and not errors, errors
        expect_closed(lambda: m.chat("hi"))
        """,
    )


# -- 2. streams left early --------------------------------------------------------------


def test_leaving_a_stream_early_does_not_deadlock(tiny: dict[str, Path]) -> None:
    _child(
        tiny,
        """
        m = load()
        expected = m.chat("hi", temperature=0, max_tokens=8).text
        for piece in m.chat("Tell a story.", stream=True, temperature=0, max_tokens=50):
            break
        done = []
        t = threading.Thread(target=lambda: done.append(m.chat("hi", temperature=0, max_tokens=8).text), daemon=True)
        t.start()
        t.join(30)
        assert done == [expected], "chat() after a stream left early did not return"

        # an unfinished stream is ended by the next chat: its partial result, nothing more;
        # also when the engine has finished the answer and only its reader has not (pause)
        for pause in (0, 1.0):
            s = m.chat("Tell a story.", stream=True, temperature=0, max_tokens=50)
            first = next(s)
            time.sleep(pause)
            assert m.chat("hi", temperature=0, max_tokens=8).text == expected
            assert list(s) == [], pause
            assert s.result is not None and s.result.text.startswith(first)
            n = s.result.usage.completion_tokens
            assert s.result.finish_reason == "stop" or n == 50, (s.result.finish_reason, n)

        for piece in m.chat("Tell a story.", stream=True, temperature=0, max_tokens=50):
            break
        t = threading.Thread(target=m.close, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "close() after a stream left early hung"
        """,
    )


def test_stream_close_keeps_the_partial_result(vm: VisionModel) -> None:
    whole = vm.chat("Tell a story.", temperature=0, max_tokens=30)
    stream = vm.chat("Tell a story.", stream=True, temperature=0, max_tokens=30)
    pieces = [next(stream), next(stream)]
    stream.close()
    assert stream.result is not None
    assert stream.result.finish_reason == "stop"
    assert stream.result.text.startswith("".join(pieces))
    assert whole.text.startswith(stream.result.text)
    assert 2 <= stream.result.usage.completion_tokens < 30
    assert stream.result.usage.prompt_tokens == whole.usage.prompt_tokens
    assert list(stream) == []
    assert vm.chat("Tell a story.", temperature=0, max_tokens=30).text == whole.text


def test_threads_calling_chat_each_get_their_own_answer(vm: VisionModel) -> None:
    prompts = ["Describe a cat.", "Name a colour.", "Count to five.", "Tell a story."]
    sequential = [vm.chat(p, temperature=0, max_tokens=20).text for p in prompts]
    answers: dict[int, str] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            for _ in range(2):
                text = vm.chat(prompts[i], temperature=0, max_tokens=20).text
                assert answers.setdefault(i, text) == text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a chat thread hung"
    assert not errors, errors
    assert [answers[i] for i in range(4)] == sequential


# -- 3. the cheap context check ---------------------------------------------------------


def test_many_short_messages_are_refused_before_tokenizing(vm: VisionModel) -> None:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word"} for i in range(20_000)]
    t0 = time.perf_counter()
    with pytest.raises(ContextOverflowError, match="context holds 4096"):
        vm.chat(messages)
    assert time.perf_counter() - t0 < 2
    assert vm.chat("hi", **GREEDY).text


def test_the_cheap_bound_lets_a_fitting_prompt_through(vm: VisionModel) -> None:
    # ~3500 tokens of real prompt in 200 messages: close to the context, still fits
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": "one two three"} for i in range(201)]
    result = vm.chat(messages, temperature=0, max_tokens=2)
    assert result.usage.prompt_tokens < vm.n_ctx
