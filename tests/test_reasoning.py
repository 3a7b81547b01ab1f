"""A thinking model's ``<think>`` block apart from its answer: the splitter on whole
answers and on streams cut anywhere, a stream's :class:`Thought` pieces, and the real
pipeline's think-shaped answers (forced by a grammar on the synthetic model)."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace

import pytest

from lfm2_edge.chat.results import ChatResult, ChatStream, Thought, Timings, Usage
from lfm2_edge.prompt.reasoning import (
    THINK_END,
    THINK_START,
    Reasoned,
    ReasoningSplitter,
    prompt_opens_thinking,
    split_reasoning,
    template_thinks,
)
from lfm2_edge.prompt.tokens import TOOL_CALL_END, TOOL_CALL_START
from lfm2_edge.prompt.tools import parse_answer


@pytest.mark.parametrize(
    ("text", "reasoning", "content"),
    [
        ("<think>a b</think>answer", "a b", "answer"),
        # the shape LFM2.5-1.2B-Thinking writes: newlines around the thought and after it
        ("<think>\nFirst, add them.\n2 + 2 = 4.\n</think>\n\nIt is 4.", "First, add them.\n2 + 2 = 4.", "It is 4."),
        ("  \n<think>x</think>y", "x", "y"),  # whitespace before the block
        ("<think></think>y", "", "y"),  # an empty block is still a thinking answer
        ("<think>  </think>  y ", "", "y "),  # the content keeps its trailing whitespace
        ("<think>cut short by max_tokens", "cut short by max_tokens", ""),
        ("<think>", "", ""),
        ("<think>a</think>", "a", ""),
        ("plain answer", None, "plain answer"),
        ("", None, ""),
        ("  padded  ", None, "  padded  "),  # no block: the text exactly as generated
        ("The tag <think>x</think> mid-answer", None, "The tag <think>x</think> mid-answer"),
        ("<thinker>no</thinker>", None, "<thinker>no</thinker>"),
        ("<think>a</think>b<think>c</think>d", "a", "b<think>c</think>d"),  # only the leading block
        ("<think>x </thi", "x </thi", ""),  # a marker that never completed is text
    ],
)
def test_split_whole(text: str, reasoning: str | None, content: str) -> None:
    assert split_reasoning(text) == Reasoned(reasoning, content)


def test_split_opened_by_the_prompt() -> None:
    # a template whose generation prompt ends with <think>: the answer starts inside the block
    assert split_reasoning("plan\n</think>\nanswer", opened=True) == Reasoned("plan", "answer")
    assert split_reasoning("still planning", opened=True) == Reasoned("still planning", "")
    assert split_reasoning("plan</think>", opened=True) == Reasoned("plan", "")
    # without the flag the same text has no reasoning: </think> alone opens nothing
    assert split_reasoning("plan\n</think>\nanswer") == Reasoned(None, "plan\n</think>\nanswer")


TEXTS = [
    "<think>\nFirst, add them.\n2 + 2 = 4.\n</think>\n\nIt is 4.",
    "  <think> spaced  out \n </think>  \n answer with  spaces  ",
    "<think>a </ b <</think>c",  # marker-like text inside the thought
    "<think>x</thinker></think>y",
    "<think>cut short",
    "<think>x </thi",
    "no think here, but </think> and <think> later",
    " <thi",
    "<th>",
    "",
    "   ",
    '<think><|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|></think>Sunny.',
]


def _stream(text: str, cuts: list[int], opened: bool) -> tuple[str, str, ReasoningSplitter, bool]:
    """Feed ``text`` in the pieces ``cuts`` make; returns the joined deltas, the splitter
    and whether every reasoning delta came before the first content delta."""
    bounds = [0, *cuts, len(text)]
    splitter = ReasoningSplitter(opened=opened)
    reasoning = content = ""
    in_order = True
    for piece in [text[a:b] for a, b in itertools.pairwise(bounds)]:
        out = splitter.feed(piece)
        in_order &= not (out.reasoning and content)
        reasoning, content = reasoning + out.reasoning, content + out.content
    out = splitter.finish()
    in_order &= not (out.reasoning and content)
    return reasoning + out.reasoning, content + out.content, splitter, in_order


@pytest.mark.parametrize("opened", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_stream_matches_whole_wherever_it_is_cut(text: str, opened: bool) -> None:
    whole = split_reasoning(text, opened=opened)
    rng = random.Random(text)
    splits: list[list[int]] = [[], list(range(1, len(text)))]  # one piece; one character at a time
    if len(text) > 2:
        splits += [sorted(rng.sample(range(1, len(text)), rng.randint(1, min(6, len(text) - 1)))) for _ in range(60)]
    for cuts in splits:
        reasoning, content, splitter, in_order = _stream(text, cuts, opened)
        assert (reasoning, content) == (whole.reasoning or "", whole.content), cuts
        assert (splitter.reasoning, splitter.content) == (whole.reasoning, whole.content), cuts
        assert in_order, cuts


def test_stream_releases_as_it_goes() -> None:
    splitter = ReasoningSplitter()
    assert not splitter.feed("<thi") and not splitter.decided  # could still be <think>
    out = splitter.feed("nk>Let me see")
    assert (out.reasoning, out.content) == ("Let me see", "") and splitter.thinking
    out = splitter.feed(" more </th")  # trailing space and "</th" held back
    assert (out.reasoning, out.content) == (" more", "")
    out = splitter.feed("ink>\n\nDone")
    assert (out.reasoning, out.content) == ("", "Done") and not splitter.thinking
    assert splitter.reasoning == "Let me see more"
    assert splitter.finish().content == "" and splitter.content == "Done"


def test_plain_answer_is_released_once_it_cannot_be_a_block() -> None:
    splitter = ReasoningSplitter()
    assert splitter.feed("  ").content == ""  # whitespace: still undecided
    out = splitter.feed("Hi")
    assert out.content == "  Hi" and splitter.decided and splitter.reasoning is None


def test_a_tool_call_written_inside_the_thought_is_not_a_call() -> None:
    """What the model thinks about calling is not a call: the tool-call parser reads the
    content only (the engine feeds its tool-call hold-back the splitter's content)."""
    call = f'{TOOL_CALL_START}[get_weather(city="Paris")]{TOOL_CALL_END}'
    text = f"<think>I could write {call} now.</think>It is sunny."
    split = split_reasoning(text)
    assert split == Reasoned(f"I could write {call} now.", "It is sunny.")
    assert parse_answer(split.content).tool_calls == ()
    assert len(parse_answer(text).tool_calls) == 1  # the raw text would have made one: the split is what stops it
    # a call after the thought is one
    answer = split_reasoning(f"<think>Paris, then.</think>{call}")
    assert answer.reasoning == "Paris, then."
    assert [c.name for c in parse_answer(answer.content).tool_calls] == ["get_weather"]


def test_consumed_counts_settled_characters() -> None:
    splitter = ReasoningSplitter()
    splitter.feed("<think>ab ")  # "<think>" dropped, "ab" released, " " held
    assert splitter.consumed == len("<think>ab")
    splitter.feed("</think>\nX")
    assert splitter.consumed == len("<think>ab </think>\nX")


def test_template_thinks_and_prompt_opens_thinking() -> None:
    assert template_thinks("{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}")
    assert not template_thinks("<|im_start|>{{ message.content }}")
    assert not template_thinks(None)
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n")


def _result(text: str, reasoning: str | None = None) -> ChatResult:
    return ChatResult(text, "stop", Usage(1, 0, 1), Timings(0.0, 0.0, 0.0, 0.0), reasoning=reasoning)


def test_stream_routes_thoughts_away_from_the_pieces() -> None:
    def steps():
        yield Thought("Let me ")
        yield Thought("see.")
        yield "It is "
        yield "4."
        return _result("It is 4.", "Let me see.")

    seen: list[str] = []
    stream = ChatStream(steps())
    stream.on_thought = seen.append
    assert list(stream) == ["It is ", "4."]  # the pieces join to result.text
    assert seen == ["Let me ", "see."]
    assert stream.result is not None and stream.result.reasoning == "Let me see."
    # without a listener the thoughts are skipped, never handed out as pieces
    plain = ChatStream(steps())
    assert "".join(plain) == "It is 4." and plain.result is not None
    assert _result("x", "r").to_dict()["reasoning"] == "r"


# The real pipeline: the synthetic model answers in the shape of a thinking model when a
# grammar makes it, and the split of its streamed pieces equals the split of its whole text.
THINKING = 'root ::= "<think>" [a-z]{2,5} " " [a-z]{2,5} "</think>" "\\n" [a-z]{2,6}'


def test_real_answers_split_the_same_streamed_and_whole(vm) -> None:
    options = {"grammar": THINKING, "temperature": 0.8, "max_tokens": 40}
    for seed in range(3):
        whole = vm.chat("Think first.", seed=seed, **options)
        split = split_reasoning(whole.text)
        assert split.reasoning is not None and " " in split.reasoning and split.content.isalpha()
        splitter = ReasoningSplitter()
        reasoning = content = ""
        for piece in vm.chat("Think first.", seed=seed, stream=True, **options):
            out = splitter.feed(piece)
            reasoning, content = reasoning + out.reasoning, content + out.content
        out = splitter.finish()
        assert (reasoning + out.reasoning, content + out.content) == (split.reasoning, split.content)


def test_markers() -> None:
    assert (THINK_START, THINK_END) == ("<think>", "</think>")


class ThinkingModel:
    """A real model whose streams come split as the engine splits a thinking model's
    (``Thought`` pieces first, then the answer, ``result.reasoning`` set): the real
    pipeline, the real splitter, the real :class:`ChatStream`, for the CLI to draw."""

    def __init__(self, vm) -> None:
        self.vm, self.model_path, self.device = vm, vm.model_path, "CPU"

    def chat(self, prompt, *, images=(), stream=False, **options):
        inner = self.vm.chat(prompt, images=list(images), stream=True, **options)

        def steps():
            splitter = ReasoningSplitter()
            for piece in [*inner, None]:
                out = splitter.feed(piece) if piece is not None else splitter.finish()
                if out.reasoning:
                    yield Thought(out.reasoning)
                if out.content:
                    yield out.content
            assert inner.result is not None
            return replace(inner.result, text=splitter.content, reasoning=splitter.reasoning)

        return ChatStream(steps())


def test_cli_draws_the_thought_dimmed_on_stderr_and_the_answer_alone_on_stdout(vm, capsys) -> None:
    from lfm2_edge.cli.answer import answer_once

    model = ThinkingModel(vm)
    options = {"grammar": THINKING, "temperature": 0.0, "max_tokens": 40}
    whole = split_reasoning(vm.chat("Think first.", **options).text)
    assert whole.reasoning and whole.content

    assert answer_once(model, "thinker", "Think first.", [], options, False) == 0
    out, err = capsys.readouterr()
    assert out == whole.content + "\n"  # stdout: the answer alone
    assert err == f"Thinking...\n{whole.reasoning}\n...done thinking.\n\n"  # not a terminal: no escape codes

    assert answer_once(model, "thinker", "Think first.", [], options, False, hide_thinking=True) == 0
    out, err = capsys.readouterr()
    assert out == whole.content + "\n" and whole.reasoning not in err and "Thinking" not in err

    assert answer_once(model, "thinker", "Think first.", [], options, True) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert (data["text"], data["reasoning"]) == (whole.content, whole.reasoning) and err == ""


def test_cli_answer_cut_short_inside_the_thought_closes_the_block(vm, capsys) -> None:
    from lfm2_edge.cli.answer import answer_once

    options: dict[str, object] = {"grammar": THINKING, "temperature": 0.0}
    # the fewest tokens that open the block and think a little, never closing it
    n = next(n for n in range(2, 40) if len(vm.chat("Think first.", max_tokens=n, **options).text) > len("<think>") + 1)
    cut = vm.chat("Think first.", max_tokens=n, **options).text
    assert THINK_END not in cut
    assert answer_once(ThinkingModel(vm), "thinker", "Think first.", [], {**options, "max_tokens": n}, False) == 0
    out, err = capsys.readouterr()
    assert out == "\n"  # no answer: it was all thought
    assert err == f"Thinking...\n{split_reasoning(cut).reasoning}\n...done thinking.\n\n"


def test_a_session_passes_the_thought_on_and_keeps_only_the_answer(vm) -> None:
    from lfm2_edge.chat.session import ChatSession

    options = {"grammar": THINKING, "temperature": 0.0, "max_tokens": 40}
    whole = split_reasoning(vm.chat("Think first.", **options).text)
    session = ChatSession(ThinkingModel(vm))
    stream = session.send("Think first.", stream=True, **options)
    seen: list[str] = []
    stream.on_thought = seen.append
    assert "".join(stream) == whole.content
    assert "".join(seen) == whole.reasoning
    assert stream.result is not None and stream.result.reasoning == whole.reasoning
    assert session.messages[-1] == {"role": "assistant", "content": whole.content}  # the thought is not history
