"""Tool calling in LFM2's native format, and grammars for structured output.

LFM2 reads its tools as JSON between ``<|tool_list_start|>`` and ``<|tool_list_end|>``
in the system turn, answers with a Python-style list of calls between
``<|tool_call_start|>`` and ``<|tool_call_end|>``::

    <|tool_call_start|>[get_candidate_status(candidate_id="12345")]<|tool_call_end|>

and reads a tool's result as a ``tool`` turn wrapped in ``<|tool_response_start|>`` …
``<|tool_response_end|>``. This module writes tools and calls in that format and turns
the model's calls into OpenAI ``tool_calls``. Calls are parsed with :mod:`ast` and only
literals are accepted: nothing the model writes is ever evaluated. A call that does not
parse stays plain text.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from lfm2_edge.chat.results import ToolCall
from lfm2_edge.errors import InvalidParameterError
from lfm2_edge.prompt.grammars import call_grammar, calls_grammar, schema_grammar
from lfm2_edge.prompt.grammars import literal as _literal
from lfm2_edge.prompt.tokens import (
    SPECIAL_TOOL_TOKENS,
    TOOL_CALL_END,
    TOOL_CALL_START,
    TOOL_LIST_END,
    TOOL_LIST_START,
    TOOL_RESPONSE_END,
    TOOL_RESPONSE_START,
    Prompt,
    template,
)

__all__ = [
    "SPECIAL_TOOL_TOKENS",
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "TOOL_LIST_END",
    "TOOL_LIST_START",
    "TOOL_RESPONSE_END",
    "TOOL_RESPONSE_START",
    "ParsedAnswer",
    "ToolCall",
    "ToolPlan",
    "call_grammar",
    "calls_grammar",
    "format_calls",
    "parse_answer",
    "schema_grammar",
    "tool_functions",
    "tool_plan",
    "tools_system_text",
]


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer split into its text and its tool calls."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()


def tool_functions(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The function definitions of OpenAI ``tools`` (``{"type": "function", "function": {...}}``)."""
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if tool.get("type", "function") == "function" else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise InvalidParameterError(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}", param="tools"
            )
        out.append(dict(fn))
    return out


def tools_system_text(functions: Sequence[Mapping[str, Any]], system: str | None) -> Prompt:
    """The system turn's text with the tool list, as LFM2's chat template writes it; the
    system text and the tool definitions are content, never control tokens."""
    listed = ", ".join(json.dumps(fn, ensure_ascii=False) for fn in functions)
    own = (system, template("\n")) if system else ()
    return Prompt.of(*own, template(f"List of tools: {TOOL_LIST_START}"), f"[{listed}]", template(TOOL_LIST_END))


def format_calls(calls: Sequence[Mapping[str, Any]]) -> Prompt:
    """OpenAI ``tool_calls`` of an assistant turn, written back in LFM2's format."""
    written = []
    for call in calls:
        fn = call.get("function", call)
        args = fn.get("arguments") or {}
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise InvalidParameterError(
                    f"tool call {fn.get('name')!r} has arguments that are not JSON", param="messages"
                ) from None
        if not isinstance(args, Mapping):
            raise InvalidParameterError(
                f"tool call {fn.get('name')!r} needs its arguments as a JSON object", param="messages"
            )
        written.append(
            f"{fn['name']}(" + ", ".join(f"{k}={_literal(v, param='messages')}" for k, v in args.items()) + ")"
        )
    return Prompt.of(template(TOOL_CALL_START), f"[{', '.join(written)}]", template(TOOL_CALL_END))


def _parse_calls(source: str) -> list[ToolCall] | None:
    """``[f(a=1), g(b="x")]`` → calls, or None when it is not exactly that shape."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return None
    body = tree.body
    nodes = body.elts if isinstance(body, ast.List) else [body]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None
        func = node.func
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return None
        name = ".".join([func.id, *reversed(parts)])
        arguments: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:  # **kwargs
                return None
            try:
                arguments[kw.arg] = ast.literal_eval(kw.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                return None
        calls.append(ToolCall(name, _jsonable(arguments), id=f"call_{uuid.uuid4().hex[:24]}"))
    return calls


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, complex)):
        return str(value)
    return value


_CALL_RE = re.compile(re.escape(TOOL_CALL_START) + r"(.*?)" + re.escape(TOOL_CALL_END), re.DOTALL)


def parse_answer(text: str, *, bare: bool = False) -> ParsedAnswer:
    """Split an answer into text and tool calls.

    Calls between the markers that parse become :class:`ToolCall`; those that do not
    stay in the text, markers and all. With ``bare=True`` (a grammar forced the call)
    the whole answer is the call list, without markers.
    """
    if bare:
        calls = _parse_calls(text)
        return ParsedAnswer("", tuple(calls)) if calls else ParsedAnswer(text)
    found: list[ToolCall] = []

    def take(match: re.Match[str]) -> str:
        calls = _parse_calls(match.group(1))
        if calls is None:
            return match.group(0)
        found.extend(calls)
        return ""

    rest = _CALL_RE.sub(take, text)
    return ParsedAnswer(rest.strip() if found else text, tuple(found))


class ToolPlan(NamedTuple):
    """How a request uses tools: the functions for the prompt, how to read calls in the
    answer (``"auto"``: between markers; ``"forced"``: the whole answer, which a grammar
    made a call list), the grammar, and whether several calls are allowed."""

    functions: list[dict[str, Any]]
    mode: Literal["auto", "forced"] | None
    grammar: str | None
    parallel: bool = True


def tool_plan(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    response_format: Mapping[str, Any] | None,
    grammar: str | None,
    *,
    parallel_tool_calls: bool | None = None,
) -> ToolPlan:
    """The :class:`ToolPlan` of a request.

    ``tool_choice`` ``"required"`` forces a call of one of the tools (or several, unless
    ``parallel_tool_calls`` is false); a named one forces exactly one call of it. Both
    constrain the arguments to the function's JSON schema (:func:`calls_grammar`).
    """
    parallel = parallel_tool_calls is not False
    functions = tool_functions(tools) if tools else []
    mode: Literal["auto", "forced"] | None = "auto" if functions else None
    if response_format is not None:
        if grammar is not None:
            raise InvalidParameterError("give response_format or grammar, not both", param="response_format")
        grammar = schema_grammar(response_format)
    if tool_choice == "required" and not functions:
        raise InvalidParameterError("tool_choice 'required' needs tools", param="tool_choice")
    if tool_choice in (None, "auto") or not functions:
        return ToolPlan(functions, mode, grammar, parallel)
    if tool_choice == "none":
        return ToolPlan([], None, grammar, parallel)
    if (tool_choice == "required" or isinstance(tool_choice, Mapping)) and grammar is not None:
        raise InvalidParameterError(
            "a required or named tool_choice cannot be combined with response_format or grammar", param="tool_choice"
        )
    if tool_choice == "required":
        return ToolPlan(functions, "forced", calls_grammar(functions, parallel=parallel), parallel)
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise InvalidParameterError(
                f"tool_choice names {name!r}, which is not among the tools", param="tool_choice"
            )
        return ToolPlan(functions, "forced", call_grammar(chosen[0]), False)
    raise InvalidParameterError(
        f"tool_choice must be 'auto', 'none', 'required' or {{'type': 'function', ...}}, not {tool_choice!r}",
        param="tool_choice",
    )
