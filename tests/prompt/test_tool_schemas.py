"""Forced and ``required`` tool calls follow their functions' JSON schemas."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from lfm2_edge import VisionModel
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.prompt.grammars import calls_grammar, literal
from lfm2_edge.prompt.tools import parse_answer, tool_plan

pytestmark = pytest.mark.slow  # `pytest -m 'not slow'` skips this module

# Every kind of value the call grammar writes; strings and arrays bounded so that random
# weights, which almost never close a string by themselves, still finish the call.
BOOKING = {
    "name": "book",
    "description": "Book a trip",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 8},
            "days": {"type": "integer"},
            "budget": {"type": "number"},
            "refundable": {"type": "boolean"},
            "note": {"type": "null"},
            "cabin": {"enum": ["economy", "business", 3, None]},
            "traveller": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"}},
                "required": ["name"],
                "additionalProperties": False,
            },
            "stops": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
            "seat": {"type": ["string", "null"], "maxLength": 4},
            "pet": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "ref": {"$ref": "#/$defs/code"},
        },
        "required": ["city", "days", "budget", "refundable", "note", "cabin", "traveller", "stops", "seat", "pet"],
        "additionalProperties": False,
        "$defs": {"code": {"type": "string", "minLength": 2, "maxLength": 3}},
    },
}
WEATHER = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
TIME = {
    "name": "get_time",
    "parameters": {
        "type": "object",
        "properties": {"zone": {"enum": ["UTC", "CET"]}, "precise": {"type": "boolean"}},
        "required": ["zone"],
        "additionalProperties": False,
    },
}


def tools(*functions: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": f} for f in functions]


def validate(call: Any, functions: list[dict[str, Any]]) -> None:
    (fn,) = [f for f in functions if f["name"] == call.name]
    # the arguments as a client reads them: strict JSON (no Infinity or NaN)
    arguments = json.loads(call.to_openai()["function"]["arguments"], parse_constant=lambda c: pytest.fail(c))
    jsonschema.validate(arguments, fn["parameters"])


def test_a_forced_call_always_validates_against_its_schema(vm: VisionModel) -> None:
    for seed in range(20):  # random weights at temperature 1: only the grammar keeps the shape
        result = vm.chat(
            "Book it.",
            tools=tools(BOOKING),
            tool_choice={"type": "function", "function": {"name": "book"}},
            temperature=1.0,
            seed=seed,
            max_tokens=400,
        )
        assert result.finish_reason == "tool_calls", result.text
        (call,) = result.tool_calls
        validate(call, [BOOKING])


def test_the_issue_example_gets_its_required_arguments(vm: VisionModel) -> None:
    for seed in range(4):
        result = vm.chat(
            "Weather?",
            tools=tools(WEATHER),
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0.8,
            seed=seed,
            max_tokens=100,
        )
        (call,) = result.tool_calls
        assert set(call.arguments) == {"city", "days"}
        validate(call, [WEATHER])


@pytest.mark.slow
def test_the_issues_example_without_max_length_always_closes(vm: VisionModel) -> None:
    """get_weather(city: string, days: integer), as a client sends it (no maxLength): with
    random weights a free string would never close; the grammar's cap ends it."""
    weather = {
        **WEATHER,
        "parameters": {
            **WEATHER["parameters"],
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        },
    }
    for seed in range(20):
        result = vm.chat(
            "Weather?",
            tools=tools(weather),
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=1.0,
            seed=seed,
            max_tokens=600,
        )
        (call,) = result.tool_calls
        validate(call, [weather])


@pytest.mark.parametrize("parallel", [None, False])
def test_required_picks_a_valid_call_of_one_of_the_tools(vm: VisionModel, parallel: bool | None) -> None:
    names = []
    for seed in range(20):
        result = vm.chat(
            "Help.",
            tools=tools(WEATHER, TIME),
            tool_choice="required",
            parallel_tool_calls=parallel,
            temperature=1.0,
            seed=seed,
            max_tokens=300,
        )
        assert result.finish_reason == "tool_calls", result.text
        if parallel is False:
            assert len(result.tool_calls) == 1
        for call in result.tool_calls:
            validate(call, [WEATHER, TIME])
            names.append(call.name)
    assert set(names) == {"get_weather", "get_time"}  # the model chooses, not the grammar


def test_required_needs_tools_and_no_other_grammar() -> None:
    with pytest.raises(Lfm2EdgeError, match="needs tools"):
        tool_plan(None, "required", None, None)
    with pytest.raises(Lfm2EdgeError, match="cannot be combined"):
        tool_plan(tools(WEATHER), "required", {"type": "json_object"}, None)
    with pytest.raises(Lfm2EdgeError, match="not a Python name"):
        calls_grammar([{"name": "f", "parameters": {"properties": {"first-name": {"type": "string"}}}}])


# -- the grammar's language, checked token by token with llama.cpp's grammar engine ------


def accepts(vm: VisionModel, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar sampler lets the model write exactly ``text``."""
    import ctypes

    import llama_cpp

    rt = vm._runtime
    sampler = llama_cpp.llama_sampler_init_grammar(rt.vocab, grammar.encode(), b"root")
    assert sampler
    try:
        for token in [*rt.tokenize(text, special=False), rt.im_end]:  # the end token: only once complete
            data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
            cur = llama_cpp.llama_token_data_array(data=data, size=1, selected=-1, sorted=False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(cur))
            if data[0].logit == float("-inf"):
                return False
            if token != rt.im_end:
                llama_cpp.llama_sampler_accept(sampler, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(sampler)


def written(fn: dict[str, Any], args: dict[str, Any]) -> str:
    return f"[{fn['name']}(" + ", ".join(f"{k}={literal(v)}" for k, v in args.items()) + ")]"


GOOD: dict[str, Any] = {
    "city": 'Ro"me\\n',
    "days": -3,
    "budget": 1.5e-05,
    "refundable": True,
    "note": None,
    "cabin": 3,
    "traveller": {"name": "Zoë", "age": 41},
    "stops": [],
    "seat": None,
    "pet": 2,
}
VALID = [
    GOOD,
    {**GOOD, "ref": "ab", "cabin": None, "seat": "12A", "pet": None, "stops": ["a", "b\tc"], "budget": 0},
    {**GOOD, "traveller": {"name": ""}, "city": "\u0001x", "budget": -12.25},
]
INVALID = [
    {k: v for k, v in GOOD.items() if k != "days"},  # a required argument missing
    {**GOOD, "extra": 1},  # not a declared argument
    {**GOOD, "days": "3"},  # a string for an integer
    {**GOOD, "days": 2.5},
    {**GOOD, "refundable": 1},
    {**GOOD, "cabin": "first"},  # not in the enum
    {**GOOD, "city": "far too long"},  # over maxLength
    {**GOOD, "traveller": {"age": 3}},  # the nested object's required member missing
    {**GOOD, "traveller": {"name": "a", "nick": "b"}},  # nor extras there
    {**GOOD, "stops": ["a", "b", "c", "d"]},  # over maxItems
    {**GOOD, "ref": "a"},  # under minLength, through $ref
    {**GOOD, "pet": "cat"},
]


def test_the_call_grammar_accepts_exactly_the_calls_that_validate(vm: VisionModel) -> None:
    grammar = calls_grammar([BOOKING])
    for args in VALID:
        text = written(BOOKING, args)
        jsonschema.validate(args, BOOKING["parameters"])
        assert accepts(vm, grammar, text), text
        (call,) = parse_answer(text, bare=True).tool_calls  # and it reads back as written
        assert call.arguments == args
    for args in INVALID:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(args, BOOKING["parameters"])
        assert not accepts(vm, grammar, written(BOOKING, args)), args
    assert not accepts(vm, grammar, written(BOOKING, GOOD).replace('"Zo', "'Zo").replace('ë"', "ë'"))


def test_optional_members_may_be_left_out_in_any_combination(vm: VisionModel) -> None:
    fn = {
        "name": "f",
        "parameters": {
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "c": {"type": "integer"}},
            "required": ["b"],
        },
    }
    grammar = calls_grammar([fn])
    for args in ({"b": 1}, {"a": 0, "b": 1}, {"b": 1, "c": 2}, {"a": 0, "b": 1, "c": 2}):
        assert accepts(vm, grammar, written(fn, args)), args
    assert not accepts(vm, grammar, "[f()]") and not accepts(vm, grammar, "[f(a=1)]")
    assert not accepts(vm, grammar, "[f(, b=1)]") and not accepts(vm, grammar, "[f(b=1, )]")
    several = calls_grammar([fn, TIME], parallel=True)
    text = '[f(b=1), get_time(zone="UTC"), f(a=2, b=3)]'
    assert accepts(vm, several, text) and not accepts(vm, calls_grammar([fn, TIME]), text)
    assert [c.name for c in parse_answer(text, bare=True).tool_calls] == ["f", "get_time", "f"]
    extra = {"name": "g", "parameters": {"properties": {"a": {"type": "integer"}}, "additionalProperties": True}}
    assert accepts(vm, calls_grammar([extra]), '[g(a=1, z="x", y=[1, {"k": None}])]')


def test_generated_calls_round_trip(vm: VisionModel) -> None:
    from lfm2_edge.prompt.tools import format_calls

    for seed in range(5):
        result = vm.chat(
            "Book it.",
            tools=tools(BOOKING),
            tool_choice="required",
            parallel_tool_calls=False,  # random weights would write call after call
            temperature=1.0,
            seed=100 + seed,
            max_tokens=400,
        )
        rewritten = format_calls([c.to_openai() for c in result.tool_calls])
        again = parse_answer(str(rewritten)).tool_calls
        assert [(c.name, c.arguments) for c in again] == [(c.name, c.arguments) for c in result.tool_calls]
        bare = rewritten.removeprefix("<|tool_call_start|>").removesuffix("<|tool_call_end|>")
        assert accepts(vm, calls_grammar([BOOKING], parallel=True), bare)
        for call in result.tool_calls:  # finite numbers only: JSON has no inf
            json.loads(call.to_openai()["function"]["arguments"], parse_constant=lambda c: pytest.fail(c))
