"""A thinking model's ``<think>`` block apart from its answer: the splitter on whole
answers and on streams cut anywhere, a stream's :class:`Thought` pieces, and the real
pipeline's think-shaped answers (forced by a grammar on the synthetic model): the
library's result and stream, OpenAI's ``reasoning_content`` and Ollama's ``thinking``
from a real server through the real clients, the CLI's dimmed block."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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
# grammar makes it; the engine splits the block off before anything else reads the text.
THINKING = 'root ::= "<think>" [a-z]{2,5} " " [a-z]{2,5} "</think>" "\\n" [a-z]{2,6}'
PROMPT = "Think first."
OPTIONS: dict[str, Any] = {"grammar": THINKING, "temperature": 0.0, "max_tokens": 40}


def _thought_then_answer(stream: ChatStream) -> tuple[list[str], list[str]]:
    """A stream's thoughts (by :attr:`ChatStream.on_thought`) and pieces, checking that
    every thought came before the first piece."""
    thoughts: list[str] = []
    pieces: list[str] = []
    stream.on_thought = lambda text: (thoughts.append(text), pytest.fail("a thought after a piece") if pieces else None)
    pieces.extend(stream)
    return thoughts, pieces


def test_the_engine_splits_a_thinking_answer_whole_and_streamed(vm) -> None:
    for seed in range(3):
        options = {**OPTIONS, "temperature": 0.8, "seed": seed}
        whole = vm.chat(PROMPT, **options)
        assert whole.reasoning is not None and " " in whole.reasoning  # [a-z]+ " " [a-z]+
        assert whole.text.isalpha()  # the answer alone: no markers, no thought, no newline
        stream = vm.chat(PROMPT, stream=True, **options)
        thoughts, pieces = _thought_then_answer(stream)
        assert thoughts and pieces
        assert ("".join(thoughts), "".join(pieces)) == (whole.reasoning, whole.text)
        assert stream.result is not None and (stream.result.reasoning, stream.result.text) == (
            whole.reasoning,
            whole.text,
        )
        # what the model wrote is the grammar's shape: the split lost nothing but the markers
        assert whole.usage.completion_tokens > len(whole.text) // 8


def test_a_plain_answer_has_no_reasoning(vm) -> None:
    whole = vm.chat(PROMPT, temperature=0.0, max_tokens=8)
    assert whole.reasoning is None
    stream = vm.chat(PROMPT, stream=True, temperature=0.0, max_tokens=8)
    thoughts, pieces = _thought_then_answer(stream)
    assert thoughts == [] and "".join(pieces) == whole.text


def test_stop_strings_are_the_answers_not_the_thoughts(vm) -> None:
    """The thought always holds a space, the answer never: a stop of " " does not cut it."""
    whole = vm.chat(PROMPT, **OPTIONS)
    stopped = vm.chat(PROMPT, stop=[" "], **OPTIONS)
    assert (stopped.reasoning, stopped.text, stopped.finish_reason) == (whole.reasoning, whole.text, "stop")
    # a stop inside the answer still cuts it
    cut = vm.chat(PROMPT, stop=[whole.text[1:]], **OPTIONS)
    assert (cut.reasoning, cut.text) == (whole.reasoning, whole.text[:1])


def test_logprobs_cover_the_thought_and_the_answer(vm) -> None:
    whole = vm.chat(PROMPT, logprobs=2, **OPTIONS)
    assert whole.logprobs is not None and len(whole.logprobs) == whole.usage.completion_tokens
    stream = vm.chat(PROMPT, stream=True, logprobs=2, **OPTIONS)
    _thought_then_answer(stream)
    assert stream.logprobs is not None and [e.token for e in stream.logprobs] == [e.token for e in whole.logprobs]


CALL = f'{TOOL_CALL_START}[get_weather(city=\\"Paris\\")]{TOOL_CALL_END}'
WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def test_a_call_written_in_the_thought_is_not_a_call_but_one_after_it_is(vm) -> None:
    inside = f'root ::= "<think>I could write {CALL} now.</think>" "\\n" [a-z]{{2,6}}'
    for stream in (False, True):
        answer = vm.chat(PROMPT, tools=WEATHER, grammar=inside, temperature=0.0, max_tokens=80, stream=stream)
        if stream:
            thoughts, pieces = _thought_then_answer(answer)
            assert "".join(thoughts).startswith("I could write ") and "".join(pieces).isalpha()
            answer = answer.result
        assert answer.tool_calls == () and answer.finish_reason == "stop"
        assert answer.reasoning == f'I could write {TOOL_CALL_START}[get_weather(city="Paris")]{TOOL_CALL_END} now.'
        assert answer.text.isalpha()
    after = f'root ::= "<think>" [a-z]{{2,5}} "</think>" "{CALL}"'
    answer = vm.chat(PROMPT, tools=WEATHER, grammar=after, temperature=0.0, max_tokens=80)
    assert [(c.name, c.arguments) for c in answer.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert answer.finish_reason == "tool_calls" and answer.reasoning and answer.reasoning.isalpha()
    assert answer.text == ""


def test_an_answer_cut_short_inside_the_thought_is_all_reasoning(vm) -> None:
    n = next(n for n in range(3, 40) if len(vm.chat(PROMPT, **{**OPTIONS, "max_tokens": n}).reasoning or "") > 1)
    cut = vm.chat(PROMPT, **{**OPTIONS, "max_tokens": n})
    assert cut.finish_reason == "length" and cut.text == "" and cut.reasoning
    stream = vm.chat(PROMPT, stream=True, **{**OPTIONS, "max_tokens": n})
    thoughts, pieces = _thought_then_answer(stream)
    assert "".join(thoughts) == cut.reasoning and pieces == []


def test_markers() -> None:
    assert (THINK_START, THINK_END) == ("<think>", "</think>")


def test_cli_draws_the_thought_dimmed_on_stderr_and_the_answer_alone_on_stdout(vm, capsys) -> None:
    from lfm2_edge.cli.answer import answer_once

    whole = vm.chat(PROMPT, **OPTIONS)
    assert whole.reasoning and whole.text

    assert answer_once(vm, "thinker", PROMPT, [], OPTIONS, False) == 0
    out, err = capsys.readouterr()
    assert out == whole.text + "\n"  # stdout: the answer alone
    assert err == f"Thinking...\n{whole.reasoning}\n...done thinking.\n\n"  # not a terminal: no escape codes

    assert answer_once(vm, "thinker", PROMPT, [], OPTIONS, False, hide_thinking=True) == 0
    out, err = capsys.readouterr()
    assert out == whole.text + "\n" and whole.reasoning not in err and "Thinking" not in err

    assert answer_once(vm, "thinker", PROMPT, [], OPTIONS, True) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert (data["text"], data["reasoning"]) == (whole.text, whole.reasoning) and err == ""


def test_cli_answer_cut_short_inside_the_thought_closes_the_block(vm, capsys) -> None:
    from lfm2_edge.cli.answer import answer_once

    n = next(n for n in range(3, 40) if len(vm.chat(PROMPT, **{**OPTIONS, "max_tokens": n}).reasoning or "") > 1)
    cut = vm.chat(PROMPT, **{**OPTIONS, "max_tokens": n})
    assert answer_once(vm, "thinker", PROMPT, [], {**OPTIONS, "max_tokens": n}, False) == 0
    out, err = capsys.readouterr()
    assert out == "\n"  # no answer: it was all thought
    assert err == f"Thinking...\n{cut.reasoning}\n...done thinking.\n\n"


def test_a_session_passes_the_thought_on_and_keeps_only_the_answer(vm) -> None:
    from lfm2_edge.chat.session import ChatSession

    whole = vm.chat(PROMPT, **OPTIONS)
    session = ChatSession(vm)
    stream = session.send(PROMPT, stream=True, **OPTIONS)
    seen: list[str] = []
    stream.on_thought = seen.append
    assert "".join(stream) == whole.text
    assert "".join(seen) == whole.reasoning
    assert stream.result is not None and stream.result.reasoning == whole.reasoning
    assert session.messages[-1] == {"role": "assistant", "content": whole.text}  # the thought is not history


# -- the server: OpenAI's reasoning_content, Ollama's thinking, through the real clients --


@pytest.fixture(scope="module")
def served(tiny: dict[str, Path]) -> Iterator[tuple[Any, Any]]:
    from lfm2_edge import VisionModel
    from lfm2_edge.server.config import ServerConfig
    from tests.helpers import start_server

    model = VisionModel(tiny["F16"], tiny["mmproj"], n_ctx=2048, n_seq_max=2)
    running = start_server([model], ServerConfig(model_names=["m"]))
    yield model, running
    running.stop()
    model.close()


MESSAGES = [{"role": "user", "content": PROMPT}]


def test_openai_reasoning_content_whole_and_streamed(served) -> None:
    from openai import OpenAI

    model, running = served
    whole = model.chat(PROMPT, **OPTIONS)
    client = OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0)
    options = {"temperature": 0.0, "max_tokens": 40, "extra_body": {"grammar": THINKING}}
    message = client.chat.completions.create(model="m", messages=MESSAGES, **options).choices[0].message
    assert message.content == whole.text
    assert (message.model_extra or {}).get("reasoning_content") == whole.reasoning
    reasoning, content = [], []
    for chunk in client.chat.completions.create(model="m", messages=MESSAGES, stream=True, **options):
        for choice in chunk.choices:
            delta = choice.delta.model_extra or {}
            if delta.get("reasoning_content"):
                assert not content, "reasoning after content"
                reasoning.append(delta["reasoning_content"])
            if choice.delta.content:
                content.append(choice.delta.content)
    assert len(reasoning) > 1  # streamed as it came, not in one piece at the end
    assert ("".join(reasoning), "".join(content)) == (whole.reasoning, whole.text)
    # logprobs: the thought's tokens come with the reasoning deltas, the answer's with the content
    before, after = [], []
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, logprobs=True, top_logprobs=1, **options
    )
    for chunk in stream:
        for choice in chunk.choices:
            tokens = [e.token for e in (choice.logprobs.content or [])] if choice.logprobs else []
            (after if after or choice.delta.content else before).extend(tokens)
    assert "".join(before + after) == f"<think>{whole.reasoning}</think>\n{whole.text}"
    assert whole.reasoning in "".join(before) and "".join(after).endswith(whole.text)
    # a plain answer carries no reasoning_content
    plain = httpx.post(
        f"{running.url}/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES, "max_tokens": 4, "temperature": 0},
        timeout=60,
    ).json()
    assert "reasoning_content" not in plain["choices"][0]["message"]


def test_a_remote_model_reads_reasoning_content_back(served) -> None:
    from lfm2_edge.openai.client import RemoteModel

    model, running = served
    whole = model.chat(PROMPT, **OPTIONS)
    with RemoteModel(f"{running.url}/v1", model="m") as remote:
        result = remote.chat(PROMPT, **OPTIONS)
        assert (result.reasoning, result.text) == (whole.reasoning, whole.text)
        thoughts, pieces = _thought_then_answer(remote.chat(PROMPT, stream=True, **OPTIONS))
        assert ("".join(thoughts), "".join(pieces)) == (whole.reasoning, whole.text)


def test_ollama_thinking_whole_and_streamed(served) -> None:
    ollama = pytest.importorskip("ollama")
    model, running = served
    whole = model.chat(PROMPT, **OPTIONS)
    client = ollama.Client(host=running.url)
    options = {"grammar": THINKING, "temperature": 0, "num_predict": 40}
    answer = client.chat(model="m", messages=MESSAGES, options=options)
    assert (answer.message.thinking, answer.message.content) == (whole.reasoning, whole.text)
    thinking, content = [], []
    for chunk in client.chat(model="m", messages=MESSAGES, options=options, stream=True):
        if chunk.message.thinking:
            assert not content, "thinking after content"
            thinking.append(chunk.message.thinking)
        if chunk.message.content:
            content.append(chunk.message.content)
    assert len(thinking) > 1 and ("".join(thinking), "".join(content)) == (whole.reasoning, whole.text)
    # think false: the reasoning is left out, and never lands in the content
    hidden = client.chat(model="m", messages=MESSAGES, options=options, think=False)
    assert (hidden.message.thinking, hidden.message.content) == (None, whole.text)
    chunks = list(client.chat(model="m", messages=MESSAGES, options=options, think=False, stream=True))
    assert all(not c.message.thinking for c in chunks) and "".join(c.message.content for c in chunks) == whole.text
    # /api/generate: thinking beside the response
    generated = client.generate(model="m", prompt=PROMPT, options=options)
    assert (generated.thinking, generated.response) == (whole.reasoning, whole.text)
    parts = list(client.generate(model="m", prompt=PROMPT, options=options, stream=True))
    assert "".join(p.thinking or "" for p in parts) == whole.reasoning
    assert "".join(p.response for p in parts) == whole.text
    # an effort level is gpt-oss's, refused with Ollama's error shape
    refused = httpx.post(
        f"{running.url}/api/chat", json={"model": "m", "messages": MESSAGES, "think": "high"}, timeout=30
    )
    assert refused.status_code == 400 and "think" in refused.json()["error"]


def test_a_template_that_opens_the_block_makes_the_answer_start_inside_it(tmp_path: Path) -> None:
    """A generation prompt ending with ``<think>`` (the model writes only the thought's
    rest and ``</think>``): ``_prepare`` sees it and the engine splits from the start."""
    from dataclasses import replace

    from lfm2_edge import TextModel
    from lfm2_edge.testing import make_synthetic_model
    from lfm2_edge.testing.synthetic import SHAPES
    from lfm2_edge.testing.templates import CHAT_TEMPLATE

    at = CHAT_TEMPLATE.rindex("{%- endif -%}")
    opening = CHAT_TEMPLATE[:at] + "{{- '<think>\\n' -}}" + CHAT_TEMPLATE[at:]
    paths = make_synthetic_model(tmp_path, replace(SHAPES["tiny"], chat_template=opening), quants=[])
    grammar = 'root ::= [a-z]{2,5} " " [a-z]{2,5} "</think>" "\\n" [a-z]{2,6}'
    with TextModel(paths["F16"], n_ctx=512) as model:
        whole = model.chat(PROMPT, grammar=grammar, temperature=0.0, max_tokens=40)
        assert whole.reasoning is not None and " " in whole.reasoning and whole.text.isalpha()
        thoughts, pieces = _thought_then_answer(
            model.chat(PROMPT, stream=True, grammar=grammar, temperature=0.0, max_tokens=40)
        )
        assert ("".join(thoughts), "".join(pieces)) == (whole.reasoning, whole.text)
