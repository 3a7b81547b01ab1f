"""ChatSession past the context: the oldest turns are dropped, failed and stopped turns
are not recorded, and the interactive CLI session goes on (real tiny model, no mocks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lfm2_edge import VisionModel
from lfm2_edge.chat.session import ChatSession
from lfm2_edge.errors import ContextOverflowError
from tests.helpers import noise_image, run_cli

GREEDY: dict[str, Any] = {"temperature": 0, "repetition_penalty": 1.0, "max_tokens": 8}
SYSTEM = "You answer briefly."
# about 60 tokens a turn: a 512-token context holds a handful of them
QUESTION = "Tell me more about the picture, its colours, shapes, corners and edges, " * 4


@pytest.fixture(scope="module")
def small(tiny: dict[str, Path]) -> Iterator[VisionModel]:
    model = VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=512, image_max_tokens=64)
    yield model
    model.close()


def _user_images(message: dict[str, Any]) -> int:
    content = message["content"]
    return 0 if isinstance(content, str) else sum(p["type"] == "image" for p in content)


def _converse(session: ChatSession, turns: int, *, stream: bool) -> list[str]:
    answers = []
    for i in range(turns):
        images = [noise_image(64, 64, seed=3)] if i == 0 else []
        if stream:
            reply = session.send(f"{i}: {QUESTION}", images, stream=True, **GREEDY)
            text = "".join(reply)
            assert reply.result is not None and reply.result.text == text
        else:
            text = session.send(f"{i}: {QUESTION}", images, **GREEDY).text
        assert session.messages[-1] == {"role": "assistant", "content": text}
        answers.append(text)
    return answers


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])
def test_a_long_conversation_drops_its_oldest_turns_and_goes_on(small: VisionModel, stream: bool) -> None:
    trims: list[int] = []
    session = ChatSession(small, system=SYSTEM, on_trim=trims.append)
    turns = 16
    _converse(session, turns, stream=stream)
    assert trims and session.dropped_turns == sum(trims)
    assert session.messages[0] == {"role": "system", "content": SYSTEM}
    body = session.messages[1:]
    assert len(body) == 2 * (turns - session.dropped_turns)
    assert [m["role"] for m in body] == ["user", "assistant"] * (len(body) // 2)
    # the turns kept are the newest, in order; the first turn's image moved onto the oldest one kept
    texts = [m["content"][-1]["text"] for m in body[::2]]
    assert texts == [f"{i}: {QUESTION}" for i in range(session.dropped_turns, turns)]
    assert _user_images(body[0]) == 1 and sum(_user_images(m) for m in body[2::2]) == 0


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])
def test_without_trim_an_overflow_raises_and_leaves_the_history(small: VisionModel, stream: bool) -> None:
    session = ChatSession(small, system=SYSTEM, trim=False)
    with pytest.raises(ContextOverflowError):
        _converse(session, 16, stream=stream)
    before = [dict(m) for m in session.messages]
    assert len(before) > 3
    with pytest.raises(ContextOverflowError):
        if stream:
            "".join(session.send(QUESTION, stream=True, **GREEDY))
        else:
            session.send(QUESTION, **GREEDY)
    assert session.messages == before and session.dropped_turns == 0


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])
def test_a_turn_too_long_alone_raises_and_leaves_the_history(small: VisionModel, stream: bool) -> None:
    session = ChatSession(small, system=SYSTEM)
    _converse(session, 2, stream=stream)
    before = [dict(m) for m in session.messages]
    huge = "word " * 1000
    with pytest.raises(ContextOverflowError):
        if stream:
            "".join(session.send(huge, stream=True, **GREEDY))
        else:
            session.send(huge, **GREEDY)
    assert session.messages == before and session.dropped_turns == 0
    _converse(session, 1, stream=stream)  # and the session goes on
    assert session.messages[0] == before[0] and session.messages[-2]["content"][-1]["text"].startswith("0: ")


def test_a_stopped_or_failed_turn_is_not_recorded(small: VisionModel, tmp_path: Path) -> None:
    session = ChatSession(small, system=SYSTEM)
    _converse(session, 1, stream=True)
    before = [dict(m) for m in session.messages]
    long = {**GREEDY, "max_tokens": 64, "stop": []}
    stream = session.send("Describe it at length.", [noise_image(64, 64, seed=5)], stream=True, **long)
    next(stream)
    stream.close()  # Ctrl-C in the CLI
    assert stream.result is not None
    assert session.messages == before
    unread = session.send("And again?", stream=True, **GREEDY)
    unread.close()  # closed before its first piece
    assert session.messages == before
    with pytest.raises(Exception, match="not found"):
        session.send("What is this?", [str(tmp_path / "missing.png")], stream=True, **GREEDY)
    assert session.messages == before
    "".join(session.send("Thanks.", stream=True, **GREEDY))  # the next turn follows the last complete one
    assert session.messages[:-2] == before and session.dropped_turns == 0


def test_reset_keeps_the_system_message(small: VisionModel) -> None:
    session = ChatSession(small, system=SYSTEM)
    _converse(session, 1, stream=False)
    session.reset()
    assert session.messages == [{"role": "system", "content": SYSTEM}]


def test_the_interactive_session_goes_on_past_the_context(tiny: dict[str, Path]) -> None:
    lines = [f"{i}: tell me about the picture, its colours and its shapes" for i in range(12)]
    lines.insert(6, "word " * 400)  # alone larger than the context: one error line
    result = run_cli(
        "chat",
        str(tiny["F16"]),
        "--mmproj",
        str(tiny["mmproj"]),
        "--ctx",
        "256",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        stdin="\n".join(lines) + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    notices = [line for line in result.stderr.splitlines() if line.startswith("(context full: dropped the")]
    assert notices, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the prompt needs" in errors[0], result.stderr
    # every line was read and answered but the one too large, and with stdin piped stdout
    # holds only the answers (no banner, no prompts)
    assert len(result.stdout.splitlines()) >= len(lines) - 1 and "> " not in result.stdout
    assert "/clear" in errors[0]
