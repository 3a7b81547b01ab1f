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
from typing import Any, Literal

from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.tokens import (
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
    "call_grammar",
    "format_calls",
    "parse_answer",
    "schema_grammar",
    "tool_functions",
    "tool_plan",
    "tools_system_text",
]


@dataclass(frozen=True)
class ToolCall:
    """One call, in the OpenAI shape: an id, a function name, JSON arguments."""

    name: str
    arguments: dict[str, Any]
    id: str = ""

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


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
            raise Lfm2EdgeError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., ...}}}}")
        out.append(dict(fn))
    return out


def tools_system_text(functions: Sequence[Mapping[str, Any]], system: str | None) -> Prompt:
    """The system turn's text with the tool list, as LFM2's chat template writes it; the
    system text and the tool definitions are content, never control tokens."""
    listed = ", ".join(json.dumps(fn, ensure_ascii=False) for fn in functions)
    own = (system, template("\n")) if system else ()
    return Prompt.of(*own, template(f"List of tools: {TOOL_LIST_START}"), f"[{listed}]", template(TOOL_LIST_END))


def _literal(value: Any) -> str:
    """A Python literal for a JSON value, strings in double quotes as LFM2 writes them."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_literal(str(k))}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise Lfm2EdgeError(f"a tool argument of type {type(value).__name__} cannot be written")


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
                raise Lfm2EdgeError(f"tool call {fn.get('name')!r} has arguments that are not JSON") from None
        if not isinstance(args, Mapping):
            raise Lfm2EdgeError(f"tool call {fn.get('name')!r} needs its arguments as a JSON object")
        written.append(f"{fn['name']}(" + ", ".join(f"{k}={_literal(v)}" for k, v in args.items()) + ")")
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


# -- grammars ---------------------------------------------------------------------------

_PY_VALUE_GBNF = r"""
value  ::= string | number | "True" | "False" | "None" | list | dict
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" ["\\/bfnrt] ){0,64} "\""
number ::= "-"? ([0-9] | [1-9] [0-9]{0,15}) ("." [0-9]{1,8})?
list   ::= "[" ( value ( ", " value ){0,15} )? "]"
dict   ::= "{" ( string ": " value ( ", " string ": " value ){0,15} )? "}"
"""


def call_grammar(function: Mapping[str, Any]) -> str:
    """A GBNF grammar that forces one call of ``function`` as ``[name(arg=value, ...)]``.

    Argument names come from the function's JSON-schema properties; values are Python
    literals (what :func:`parse_answer` accepts).
    """
    name = function["name"]
    props = list((function.get("parameters") or {}).get("properties") or {})
    if props:
        arg = " | ".join(json.dumps(f"{p}=") for p in props)
        args = f'( kwarg ( ", " kwarg ){{0,{len(props) - 1}}} )?\nkwarg ::= ( {arg} ) value'
    else:
        args = '""'
    return f'root ::= "[" {json.dumps(name)} "(" args ")]"\nargs ::= {args}\n{_PY_VALUE_GBNF}'


def _from_schema(schema: Mapping[str, Any]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise Lfm2EdgeError(f"the JSON schema cannot be turned into a grammar: {exc}") from None
    # llama-cpp-python's converter lets raw control characters into strings, which JSON forbids
    return grammar.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')


def schema_grammar(response_format: Mapping[str, Any]) -> str | None:
    """A GBNF grammar for an OpenAI ``response_format`` (``json_object`` or ``json_schema``)."""
    from llama_cpp.llama_grammar import JSON_GBNF

    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return _from_schema(schema) if isinstance(schema, Mapping) else JSON_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise Lfm2EdgeError("response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}")
        return _from_schema(schema)
    raise Lfm2EdgeError(f"response_format type must be text, json_object or json_schema, not {kind!r}")


def tool_plan(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | Mapping[str, Any] | None,
    response_format: Mapping[str, Any] | None,
    grammar: str | None,
) -> tuple[list[dict[str, Any]], Literal["auto", "forced"] | None, str | None]:
    """(functions for the prompt, how to read calls in the answer, grammar) of a request."""
    functions = tool_functions(tools) if tools else []
    mode: Literal["auto", "forced"] | None = "auto" if functions else None
    if response_format is not None:
        if grammar is not None:
            raise Lfm2EdgeError("give response_format or grammar, not both")
        grammar = schema_grammar(response_format)
    if tool_choice in (None, "auto") or not functions:
        return functions, mode, grammar
    if tool_choice == "none":
        return [], None, grammar
    if isinstance(tool_choice, Mapping):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise Lfm2EdgeError(f"tool_choice names {name!r}, which is not among the tools")
        if grammar is not None:
            raise Lfm2EdgeError("a named tool_choice cannot be combined with response_format or grammar")
        return functions, "forced", call_grammar(chosen[0])
    raise Lfm2EdgeError(f"tool_choice must be 'auto', 'none' or {{'type': 'function', ...}}, not {tool_choice!r}")
