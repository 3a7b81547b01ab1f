"""HoldBack: streamed text never shows a stop string or tool-call markup."""

from __future__ import annotations

from lfm2_edge.chat.results import ChatResult, Timings, Usage
from lfm2_edge.prompt.holdback import HoldBack
from lfm2_edge.prompt.tools import parse_answer

ANSWER = 'Let me check. <|tool_call_start|>[get_candidate_status(candidate_id="1")]<|tool_call_end|> Done.'


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def result(text: str) -> ChatResult:
    parsed = parse_answer(text)
    return ChatResult(parsed.content, "tool_calls", Usage(1, 0, 1), Timings(0, 0, 0, 0), tool_calls=parsed.tool_calls)


def test_text_without_markers_passes_at_once() -> None:
    hold = HoldBack()
    assert [hold.feed(p)[0] for p in ("ab", "cd")] == ["ab", "cd"]


def test_a_stop_string_is_never_shown_even_split_across_pieces() -> None:
    text = "one two STOP three"
    for size in (1, 2, 3, 7):
        hold = HoldBack(stops=["STOP", "never"])
        shown, stopped = "", False
        for p in pieces(text, size):
            out, stopped = hold.feed(p)
            shown += out
            if stopped:
                break
        assert stopped and shown == "one two " and hold.text == "one two "


def test_text_that_only_starts_like_a_stop_string_is_released_at_the_end() -> None:
    hold = HoldBack(stops=["STOP"])
    assert hold.feed("abc ST")[0] == "abc"
    assert hold.finish() == " ST"
