"""GBNF grammars: LFM2's tool calls constrained to their functions' JSON schemas, and
OpenAI ``response_format`` JSON (through llama-cpp-python's JSON-schema converter).

Calls are Python literals as LFM2 writes them (:func:`literal`), which
:func:`lfm2_edge.prompt.tools.parse_answer` reads back.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lfm2_edge.errors import InvalidParameterError

__all__ = ["call_grammar", "calls_grammar", "literal", "schema_grammar"]


def literal(value: Any, *, param: str = "tools") -> str:
    """A Python literal for a JSON value, strings in double quotes as LFM2 writes them
    (``param``: the request field a value that cannot be written comes from)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{literal(str(k))}: {literal(v, param=param)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v, param=param) for v in value) + "]"
    raise InvalidParameterError(f"a tool argument of type {type(value).__name__} cannot be written", param=param)


# A string argument without maxLength ends within this many characters: a small model
# (and any model at a high temperature) may otherwise never close it, and the call never
# parses. A schema's own maxLength overrides it.
MAX_FREE_STRING = 256
MAX_FREE_ITEMS = 64  # likewise for a list (or dict) without maxItems

# Python literals as LFM2 writes them (and as :func:`_literal` does): strings in double
# quotes with JSON's escapes, True / False / None, lists and dicts with ", " and ": ".
_BASE_GBNF = r"""
char    ::= [^"\\\x7F\x00-\x1F] | "\\" ["\\bfnrt] | "\\u00" [01] [0-9a-fA-F]
string  ::= "\"" char{0,MAX_FREE_STRING} "\""
integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
number  ::= integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?
boolean ::= "True" | "False"
null    ::= "None"
value   ::= string | number | boolean | null | list | dict
list    ::= "[" ( value ( ", " value ){0,MORE_ITEMS} )? "]"
dict    ::= "{" ( string ": " value ( ", " string ": " value ){0,MORE_ITEMS} )? "}"
ident   ::= [a-zA-Z_] [a-zA-Z0-9_]*
""".replace("MAX_FREE_STRING", str(MAX_FREE_STRING)).replace("MORE_ITEMS", str(MAX_FREE_ITEMS - 1))
_TYPE_RULES = {"integer": "integer", "number": "number", "boolean": "boolean", "null": "null"}


def _gbnf_text(text: str) -> str:
    return json.dumps(text)  # a GBNF literal: JSON's escapes are GBNF's


class _CallGrammar:
    """Writes GBNF rules for JSON-schema values as the Python literals LFM2 writes.

    Followed: ``type`` (one or a list; string, integer, number, boolean, null, array,
    object), ``enum``, ``const``, ``anyOf`` / ``oneOf``, ``allOf`` (merged), ``nullable``,
    local ``$ref``, ``properties`` (declared order; ``required`` ones always there),
    ``additionalProperties`` (extra members only when it is true or a schema),
    ``items``, ``minItems`` / ``maxItems``, ``minLength`` / ``maxLength``. Not enforced:
    ``pattern``, ``format``, numeric ranges, ``uniqueItems``.
    """

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._refs: dict[tuple[int, str], str] = {}

    def rule(self, hint: str, body: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9]+", "-", hint).strip("-").lower() or "r"
        name, n = f"x-{base}", 1
        while name in self.rules:
            n += 1
            name = f"x-{base}-{n}"
        self.rules[name] = body
        return name

    def value(self, schema: Any, root: Mapping[str, Any], hint: str) -> str:
        """A GBNF expression for one value of ``schema`` (``root`` resolves ``$ref``)."""
        if not isinstance(schema, Mapping) or not schema:
            return "value"
        if isinstance(schema.get("$ref"), str):
            return self._ref(schema["$ref"], root)
        if "const" in schema:
            return _gbnf_text(literal(schema["const"]))
        if isinstance(schema.get("enum"), list):
            return "( " + " | ".join(_gbnf_text(literal(v)) for v in schema["enum"]) + " )"
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                alts = [self.value(s, root, f"{hint}-{i}") for i, s in enumerate(schema[key])]
                return "( " + " | ".join(alts) + " )"
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self._resolve(part, root)
                props = {**merged.get("properties", {}), **part.get("properties", {})}
                required = [*merged.get("required", []), *part.get("required", [])]
                merged.update(part)
                merged.update({"properties": props, "required": required} if props else {})
            return self.value(merged, root, hint)
        kind = schema.get("type")
        if isinstance(kind, list):
            alts = [self.value({**schema, "type": t}, root, f"{hint}-{t}") for t in kind]
            return "( " + " | ".join(alts) + " )"
        if schema.get("nullable") is True:
            return f"( {self.value({k: v for k, v in schema.items() if k != 'nullable'}, root, hint)} | null )"
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else None
        if kind in _TYPE_RULES:
            return _TYPE_RULES[kind]
        if kind == "string":
            lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
            if not lo and hi is None:
                return "string"
            hi = max(lo, MAX_FREE_STRING) if hi is None else int(hi)
            return self.rule(hint, f'"\\"" char{{{lo},{hi}}} "\\""')
        if kind == "array":
            item = self.value(schema.get("items"), root, f"{hint}-item")
            lo, hi = int(schema.get("minItems", 0)), schema.get("maxItems")
            hi = max(lo, MAX_FREE_ITEMS) if hi is None else int(hi)
            more = f"{{0,{max(0, hi - 1)}}}"
            if lo:
                more = f"{{{lo - 1},{hi - 1}}}"
                return self.rule(hint, f'"[" {item} ( ", " {item} ){more} "]"')
            if hi <= 0:
                return '"[]"'
            return self.rule(hint, f'"[" ( {item} ( ", " {item} ){more} )? "]"')
        if kind == "object":
            if "properties" not in schema and schema.get("additionalProperties") in (None, True):
                return "dict"
            return self.rule(hint, f'"{{" {self.members(schema, root, hint, kwargs=False)} "}}"')
        return "value"

    def members(self, schema: Mapping[str, Any], root: Mapping[str, Any], hint: str, *, kwargs: bool) -> str:
        """An object's members as ``k=v, ...`` (``kwargs``) or ``"k": v, ...``: the
        declared properties in order, the required ones always, then any extra ones."""
        props = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        parts: list[tuple[str, bool]] = []
        for name, sub in props.items():
            if kwargs and (not name.isidentifier() or keyword.iskeyword(name)):
                raise InvalidParameterError(
                    f"parameter {name!r} is not a Python name: LFM2's call format cannot write it", param="tools"
                )
            key = f"{name}=" if kwargs else f"{literal(name)}: "
            parts.append((f"{_gbnf_text(key)} {self.value(sub, root, f'{hint}-{name}')}", name in required))
        extra = schema.get("additionalProperties")
        first, rest = '""', '""'
        if extra is not None and extra is not False:
            member = f"{'ident' if kwargs else 'string'} {_gbnf_text('=' if kwargs else ': ')} "
            member += self.value(extra if isinstance(extra, Mapping) else {}, root, f"{hint}-extra")
            rest = self.rule(f"{hint}-more", f'( ", " {member} )*')
            first = self.rule(f"{hint}-extra", f"( {member} {rest} )?")
        for member, needed in reversed(parts):
            new_rest = f'", " {member} {rest}' if needed else f'( ", " {member} )? {rest}'
            new_first = f"{member} {rest}" if needed else f"{member} {rest} | {first}"
            rest, first = self.rule(f"{hint}-rest", new_rest), self.rule(f"{hint}-first", new_first)
        return first

    def _resolve(self, schema: Any, root: Mapping[str, Any]) -> Mapping[str, Any]:
        while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
            schema = self._target(schema["$ref"], root)
        return schema if isinstance(schema, Mapping) else {}

    def _ref(self, ref: str, root: Mapping[str, Any]) -> str:
        key = (id(root), ref)
        if key not in self._refs:  # named before it is written, so a schema may refer to itself
            self._refs[key] = name = self.rule(f"ref-{ref.rsplit('/', 1)[-1]}", "")
            self.rules[name] = self.value(self._target(ref, root), root, name)
        return self._refs[key]

    @staticmethod
    def _target(ref: str, root: Mapping[str, Any]) -> Any:
        if not ref.startswith("#"):
            raise InvalidParameterError(f"only local $ref are supported in tool parameters, not {ref!r}", param="tools")
        node: Any = root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise InvalidParameterError(f"tool parameters' $ref {ref!r} points at nothing", param="tools")
            node = node[part]
        return node


def calls_grammar(functions: Sequence[Mapping[str, Any]], *, parallel: bool = False) -> str:
    """A GBNF grammar that forces a call list ``[name(arg=value, ...)]`` of these functions:
    one call (of any of them), or several separated by ``", "`` when ``parallel``.

    Each call's arguments follow its function's JSON-schema ``parameters`` (see
    :class:`_CallGrammar`), written as the Python literals :func:`parse_answer` reads.
    """
    g = _CallGrammar()
    calls = []
    for fn in functions:
        params = fn.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise InvalidParameterError(
                f"tool {fn['name']!r} has parameters that are not a JSON schema object", param="tools"
            )
        try:
            args = g.members(params, params, f"{fn['name']}-args", kwargs=True)
        except (AttributeError, TypeError, KeyError) as exc:  # a schema keyword of the wrong JSON type
            raise InvalidParameterError(
                f"tool {fn['name']!r} has parameters that are not a valid JSON schema ({type(exc).__name__}: {exc})",
                param="tools",
            ) from None
        calls.append(g.rule(f"call-{fn['name']}", f'{_gbnf_text(str(fn["name"]) + "(")} {args} ")"'))
    call = " | ".join(calls)
    root = f'"[" ( {call} ) ( ", " ( {call} ) )* "]"' if parallel else f'"[" ( {call} ) "]"'
    body = "\n".join(f"{name} ::= {rule}" for name, rule in g.rules.items())
    return f"root ::= {root}\n{body}\n{_BASE_GBNF}"


def call_grammar(function: Mapping[str, Any]) -> str:
    """A GBNF grammar that forces one call of ``function`` as ``[name(arg=value, ...)]``."""
    return calls_grammar([function])


def _from_schema(schema: Mapping[str, Any]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:
        raise InvalidParameterError(
            f"the JSON schema cannot be turned into a grammar: {exc}", param="response_format"
        ) from None
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
            raise InvalidParameterError(
                "response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}",
                param="response_format",
            )
        return _from_schema(schema)
    raise InvalidParameterError(
        f"response_format type must be text, json_object or json_schema, not {kind!r}", param="response_format"
    )
