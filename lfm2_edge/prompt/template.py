"""A GGUF's own chat template, rendered in a sandbox, with content kept as content.

Official LFM2 / LFM2-VL / LFM2.5-VL files carry ``tokenizer.chat_template`` (Jinja). It
is rendered as llama-cpp-python and transformers do: Jinja2's
``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``; nothing
else from a file is ever executed.

A template sees no message text. Every content string (message text, system text, tool
definitions, tool calls) is replaced by a sentinel ``\\x00<nonce>:<i>\\x00``, random per
render; the output is cut at the sentinels, so what the template wrote becomes template
segments of a :class:`~lfm2_edge.prompt.tokens.Prompt` (its markers are control tokens) and
what it quoted becomes content segments (always plain text). A template that mangles a
sentinel (``| tojson`` of a message, slicing) cannot be split that way and is not used.

Image parts are given to the template as ``{"type": "image"}`` parts, in the order the
turn's content was given (as transformers and llama-server do); a turn built from text and
images without an order (the CLI's ``-i ... -p ...``) has its images first, as the cards'
examples.

When a template is absent, fails to render, writes a different number of image markers
than there are images, or does not handle tools in a request that has them, the caller
(:func:`lfm2_edge.prompt.chatml.render_prompt`) falls back to its built-in ChatML: one notice on
stderr when ``verbose``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.prompt.tokens import BOS, EOS, IMAGE_MARKER, Prompt

if TYPE_CHECKING:
    from lfm2_edge.chat.messages import Message

__all__ = ["ChatTemplate", "TemplateError", "template_hash", "template_of"]

MAX_TEMPLATE = 1 << 20  # bytes; the official ones are 434 and 3,837


class TemplateError(Lfm2EdgeError):
    """The file's chat template cannot render this conversation; the caller falls back."""


def template_hash(source: str) -> str:
    """sha256 of a template's UTF-8 text (hex): what ``lfm2-edge info`` prints."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    """``tojson`` as llama-cpp-python defines it (no HTML escaping, non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _compile(source: str) -> tuple[Any, bool]:
    """The compiled template and whether it reads ``tools``."""
    import jinja2
    import jinja2.ext
    import jinja2.meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        """Hugging Face's ``{% generation %}`` tag: its body renders as is."""

        tags = {"generation"}  # noqa: RUF012 (jinja2's own attribute)

        def parse(self, parser: Any) -> Any:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    reads = jinja2.meta.find_undeclared_variables(env.parse(source))
    return env.from_string(source), "tools" in reads


@dataclass
class ChatTemplate:
    """A model's chat template (or none), and the one-notice fallback bookkeeping."""

    source: str | None
    add_bos: bool = True  # llama.cpp adds BOS (tokenizer.ggml.add_bos_token)
    verbose: bool = False
    _compiled: Any = field(default=None, repr=False)
    handles_tools: bool = False
    _noticed: bool = field(default=False, repr=False)
    _error: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.source is None:
            return
        try:
            self._compiled, self.handles_tools = _compile(self.source)
        except Exception as exc:  # a template llama.cpp may accept but Jinja2 does not
            self._error = f"the file's chat template does not compile ({type(exc).__name__}: {exc})"
            self._compiled = None

    @property
    def usable(self) -> bool:
        return self._compiled is not None

    @property
    def sha256(self) -> str | None:
        return template_hash(self.source) if self.source is not None else None

    def notice(self, reason: str) -> None:
        """One line on stderr, once per model, when ``verbose``: the built-in ChatML is used."""
        if self.verbose and not self._noticed:
            self._noticed = True
            print(f"lfm2-edge: {reason}; using the built-in LFM2 ChatML", file=sys.stderr)

    def fallback_reason(self) -> str:
        if self.source is None:
            return "the model file has no chat template"
        return self._error or "the file's chat template cannot be used"

    def render(
        self,
        messages: Sequence[Message],
        *,
        system_prompt: str | None,
        add_generation_prompt: bool,
        tools: Sequence[Mapping[str, Any]],
        format_calls: Callable[[Sequence[Any]], Prompt],
    ) -> Prompt:
        """The conversation through the template, or :class:`TemplateError`."""
        if self._compiled is None:
            raise TemplateError(self.fallback_reason())
        uses_tools = bool(tools) or any(m.role == "tool" or m.tool_calls for m in messages)
        if uses_tools and not self.handles_tools:
            raise TemplateError("the file's chat template does not handle tools")
        values: list[str | Prompt] = []
        nonce = secrets.token_hex(8)

        def hide(value: str | Prompt) -> str:
            if not value:
                return ""  # nothing to protect; keeps the template's emptiness tests true
            if nonce in value:
                raise TemplateError("a message spells this render's sentinel")  # 2^-64
            values.append(value)
            return f"\x00{nonce}:{len(values) - 1}\x00"

        turns: list[dict[str, Any]] = []
        has_system = bool(messages) and messages[0].role == "system"
        if system_prompt is not None and not has_system and not tools:
            turns.append({"role": "system", "content": hide(system_prompt)})
        n_images = 0
        for m in messages:
            text: str | Prompt = Prompt.of(format_calls(m.tool_calls), m.text) if m.tool_calls else m.text
            if m.images:
                n_images += len(m.images)
                parts: list[dict[str, str]]
                if m.parts is None or m.tool_calls:  # images first, then the text
                    parts = [*({"type": "image"} for _ in m.images), {"type": "text", "text": hide(text)}]
                else:  # the order the parts were given in
                    parts = [
                        {"type": "image"} if isinstance(p, int) else {"type": "text", "text": hide(p)} for p in m.parts
                    ]
                turns.append({"role": m.role, "content": parts})
            else:
                turns.append({"role": m.role, "content": hide(text)})
        hidden_tools = [hide(json.dumps(t, ensure_ascii=False)) for t in tools] if tools else None
        try:
            out = self._compiled.render(
                messages=turns,
                tools=hidden_tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=BOS,
                eos_token=EOS,
            )
        except TemplateError:
            raise
        except Exception as exc:
            raise TemplateError(f"the file's chat template failed ({type(exc).__name__}: {exc})") from None
        return self._split(out, nonce, values, n_images)

    def _split(self, out: str, nonce: str, values: list[str | Prompt], n_images: int) -> Prompt:
        parts: list[str | tuple[str, bool]] = []
        pieces = re.split(f"\x00{nonce}:(\\d+)\x00", out)
        for i, piece in enumerate(pieces):
            if i % 2:
                index = int(piece)
                if index >= len(values):
                    raise TemplateError("the file's chat template rewrote a message")
                parts.append(values[index])
            else:
                if nonce in piece or "\x00" in piece:
                    raise TemplateError("the file's chat template rewrote a message (e.g. sliced or escaped it)")
                parts.append((piece, True))
        template_text = "".join(p[0] for p in parts if isinstance(p, tuple))
        if template_text.count(IMAGE_MARKER) != n_images:
            raise TemplateError(f"the file's chat template does not write one {IMAGE_MARKER} per image")
        # mtmd adds no BOS for us (the prompt is sent without add_special): exactly one, first
        if not out.startswith(BOS) and self.add_bos:
            parts.insert(0, (BOS, True))
        return Prompt.of(*parts)


def _flag(value: Any, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):  # llama-cpp-python's metadata dict holds strings
        return value.strip().lower() in ("true", "1")
    return default


def template_of(summary: Any, *, verbose: bool = False) -> ChatTemplate:
    """The chat template of a GGUF header: a :class:`lfm2_edge.hub.gguf.GgufSummary` (its
    ``metadata``), llama-cpp-python's metadata dict, or None."""
    meta: Mapping[str, Any]
    if summary is None:
        meta = {}
    elif isinstance(summary, Mapping):
        meta = summary
    else:
        meta = summary.metadata
    source = meta.get("tokenizer.chat_template")
    if not isinstance(source, str) or not source or len(source.encode("utf-8")) > MAX_TEMPLATE:
        source = None
    return ChatTemplate(source, add_bos=_flag(meta.get("tokenizer.ggml.add_bos_token"), True), verbose=verbose)
