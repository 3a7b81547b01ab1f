"""LFM2's native tool format, structured output through grammars, and text models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lfm2_edge import TextModel, VisionModel
from lfm2_edge.chat.messages import normalize_messages
from lfm2_edge.hub.catalog import TEXT_SAMPLING
from lfm2_edge.prompt.chatml import render_prompt
from lfm2_edge.prompt.tools import ToolCall, format_calls, parse_answer, tool_functions
from tests.helpers import TOOLS

# The tool-use conversation of the LFM2-1.2B model card, verbatim.
CARD_PROMPT = (
    "<|startoftext|><|im_start|>system\n"
    'List of tools: <|tool_list_start|>[{"name": "get_candidate_status", "description": "Retrieves the current '
    'status of a candidate in the recruitment process", "parameters": {"type": "object", "properties": '
    '{"candidate_id": {"type": "string", "description": "Unique identifier for the candidate"}}, "required": '
    '["candidate_id"]}}]<|tool_list_end|><|im_end|>\n'
    "<|im_start|>user\n"
    "What is the current status of candidate ID 12345?<|im_end|>\n"
    "<|im_start|>assistant\n"
    '<|tool_call_start|>[get_candidate_status(candidate_id="12345")]<|tool_call_end|>Checking the current status '
    "of candidate ID 12345.<|im_end|>\n"
    "<|im_start|>tool\n"
    '<|tool_response_start|>{"candidate_id": "12345", "status": "Interview Scheduled", "position": "Clinical '
    'Research Associate", "date": "2023-11-20"}<|tool_response_end|><|im_end|>\n'
    "<|im_start|>assistant\n"
    'The candidate with ID 12345 is currently in the "Interview Scheduled" stage for the position of Clinical '
    "Research Associate, with an interview date set for 2023-11-20.<|im_end|>\n"
)
RESULT = (
    '{"candidate_id": "12345", "status": "Interview Scheduled", "position": "Clinical Research Associate", '
    '"date": "2023-11-20"}'
)
CONVERSATION: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the current status of candidate ID 12345?"},
    {
        "role": "assistant",
        "content": "Checking the current status of candidate ID 12345.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_candidate_status", "arguments": '{"candidate_id": "12345"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": RESULT},
    {
        "role": "assistant",
        "content": 'The candidate with ID 12345 is currently in the "Interview Scheduled" stage for the position of '
        "Clinical Research Associate, with an interview date set for 2023-11-20.",
    },
]


def test_the_card_conversation_renders_exactly() -> None:
    prompt = render_prompt(normalize_messages(CONVERSATION), tools=tool_functions(TOOLS), add_generation_prompt=False)
    assert prompt == CARD_PROMPT


def test_a_card_style_answer_parses_into_openai_tool_calls() -> None:
    answer = (
        '<|tool_call_start|>[get_candidate_status(candidate_id="12345")]<|tool_call_end|>'
        "Checking the current status of candidate ID 12345."
    )
    parsed = parse_answer(answer)
    assert parsed.content == "Checking the current status of candidate ID 12345."
    (call,) = parsed.tool_calls
    openai = call.to_openai()
    assert openai["type"] == "function" and openai["id"].startswith("call_")
    assert openai["function"] == {"name": "get_candidate_status", "arguments": '{"candidate_id": "12345"}'}


def test_several_calls_and_literal_arguments() -> None:
    answer = (
        "<|tool_call_start|>[a.b(x=1, y=-2.5, flag=True, none=None), "
        "search(q='it\\'s', tags=['x', 'y'], opts={'k': (1, 2)})]<|tool_call_end|>"
    )
    calls = parse_answer(answer).tool_calls
    assert [(c.name, c.arguments) for c in calls] == [
        ("a.b", {"x": 1, "y": -2.5, "flag": True, "none": None}),
        ("search", {"q": "it's", "tags": ["x", "y"], "opts": {"k": [1, 2]}}),
    ]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize(
    "inner",
    [
        '[get(x=__import__("os").system("true"))]',  # not a literal: never evaluated
        "[get(1)]",  # positional arguments have no names to give
        "[get(**opts)]",
        "[get(x=1]",  # syntax error
        "get",
        "[1, 2]",
        "[get(x=1)] + [get(x=2)]",
        "",
    ],
)
def test_malformed_calls_stay_plain_text(inner: str) -> None:
    answer = f"<|tool_call_start|>{inner}<|tool_call_end|>then text"
    parsed = parse_answer(answer)
    assert parsed.tool_calls == () and parsed.content == answer


def test_calls_round_trip_through_the_native_format() -> None:
    calls = [{"function": {"name": "f", "arguments": json.dumps({"s": 'a "quoted" ü', "n": [1, 2.5, None, False]})}}]
    written = format_calls(calls)
    assert written == '<|tool_call_start|>[f(s="a \\"quoted\\" ü", n=[1, 2.5, None, False])]<|tool_call_end|>'
    (call,) = parse_answer(written).tool_calls
    assert (call.name, call.arguments) == ("f", {"s": 'a "quoted" ü', "n": [1, 2.5, None, False]})


SCHEMA = {
    "type": "object",
    "properties": {
        "merchant": {"type": "string", "maxLength": 12},
        "total": {"type": "integer"},
        "paid": {"type": "boolean"},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "items": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["merchant", "total", "paid", "currency", "items"],
    "additionalProperties": False,
}


def check_schema(data: Any) -> None:
    assert isinstance(data, dict) and set(data) == set(SCHEMA["properties"])
    assert isinstance(data["merchant"], str) and len(data["merchant"]) <= 12
    assert isinstance(data["total"], int) and not isinstance(data["total"], bool)
    assert isinstance(data["paid"], bool)
    assert data["currency"] in ("EUR", "USD", "GBP")
    assert isinstance(data["items"], list) and len(data["items"]) <= 3
    assert all(isinstance(i, str) and len(i) <= 8 for i in data["items"])


def test_json_schema_output_always_validates(vm: VisionModel) -> None:
    from tests.helpers import noise_image

    fmt = {"type": "json_schema", "json_schema": {"name": "receipt", "schema": SCHEMA}}
    photo = noise_image(96, 64, seed=4)
    for seed in range(8):  # random weights, sampled at temperature 1: the grammar still holds
        result = vm.chat(
            "Extract the receipt.", images=[photo], response_format=fmt, temperature=1.0, seed=seed, max_tokens=400
        )
        check_schema(json.loads(result.text))
        assert result.finish_reason == "stop"


def test_json_object_output_is_a_json_object(vm: VisionModel) -> None:
    finished = 0
    for seed in range(6):
        result = vm.chat(
            "Say it as JSON.", response_format={"type": "json_object"}, temperature=1.0, seed=seed, max_tokens=300
        )
        assert result.text.startswith("{")
        if result.finish_reason == "stop":  # cut by max_tokens, an unbounded string stays open
            assert isinstance(json.loads(result.text), dict)
            finished += 1
    assert finished >= 1


def test_a_named_tool_choice_forces_that_call(vm: VisionModel) -> None:
    # Random weights never close a string by themselves, and a string without maxLength
    # is not cut short by the grammar (a real model closes it): bound this one.
    (fn,) = tool_functions(TOOLS)
    props = {"candidate_id": {"type": "string", "maxLength": 12}}
    bounded = {**fn, "parameters": {**fn["parameters"], "properties": props}}
    for seed in range(4):
        result = vm.chat(
            "What is the status of candidate 7?",
            tools=[{"type": "function", "function": bounded}],
            tool_choice={"type": "function", "function": {"name": "get_candidate_status"}},
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        assert result.finish_reason == "tool_calls"
        (call,) = result.tool_calls
        assert call.name == "get_candidate_status" and set(call.arguments) == {"candidate_id"}  # it is required


def test_tool_choice_none_writes_no_tools(vm: VisionModel) -> None:
    result = vm.chat("Hi", tools=TOOLS, tool_choice="none", max_tokens=4)
    plain = vm.chat("Hi", max_tokens=4)
    with_tools = vm.chat("Hi", tools=TOOLS, max_tokens=4)
    # the prompt is the one without tools: the tool list is not written
    assert result.usage.prompt_tokens == plain.usage.prompt_tokens < with_tools.usage.prompt_tokens
    assert result.tool_calls == ()


def test_bad_tool_requests_are_clear_errors(vm: VisionModel) -> None:
    from lfm2_edge.errors import Lfm2EdgeError

    with pytest.raises(Lfm2EdgeError, match="not among the tools"):
        vm.chat("x", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(Lfm2EdgeError, match=r"tools\[0\] must be"):
        vm.chat("x", tools=[{"type": "function"}])
    with pytest.raises(Lfm2EdgeError, match="response_format type"):
        vm.chat("x", response_format={"type": "yaml"})


def test_text_model_runs_with_the_text_card_defaults(tiny: dict[str, Path]) -> None:
    with TextModel(tiny["Q4_0"]) as model:
        assert model._runtime.projector is None and model.sampling == TEXT_SAMPLING
        assert model.system_prompt == "You are a helpful assistant trained by Liquid AI."
        result = model.chat("What is C. elegans?", max_tokens=4)
        assert result.usage.image_tokens == 0 and result.usage.completion_tokens >= 1


@pytest.mark.slow
def test_cli_schema_gives_json(tiny: dict[str, Path], tmp_path: Path) -> None:
    schema = tmp_path / "receipt.json"
    schema.write_text(json.dumps(SCHEMA))
    args = [
        "chat",
        str(tiny["F16"]),
        "--prompt",
        "Extract.",
        "--temperature",
        "1",
        "--seed",
        "3",
        "--max-tokens",
        "400",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", *args, "--schema", str(schema)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    check_schema(json.loads(proc.stdout))
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    proc = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", *args, "--schema", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is not JSON" in proc.stderr


def test_tool_call_dataclass_is_what_the_result_carries() -> None:
    call = ToolCall("f", {"a": 1}, id="call_x")
    assert call.to_openai() == {"id": "call_x", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}


@pytest.mark.slow
def test_bench_runs_a_text_model(tiny: dict[str, Path], tmp_path: Path) -> None:
    alone = tmp_path / "LFM2-350M-Q4_0.gguf"  # no projector next to it: a text model
    alone.write_bytes(tiny["Q4_0"].read_bytes())
    proc = subprocess.run(
        [sys.executable, "-m", "lfm2_edge.cli", "bench", str(alone), "--repeat", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["results"]
    assert "image_512x512_ms" not in row and row["decode_tok_s"] > 0 and row["ttft_turn2_ms"] > 0
    assert row["peer"]["decode_tok_s"] > 0
