"""The LFM2 ChatML prompt, the content of each turn in the order it was given.

A turn's text and image parts are written in the order the request gave them, as
transformers' ``Lfm2VlProcessor`` (the reference) and llama-server do; a turn built from
text and images without an order (the CLI's ``-i ... -p ...``, ``chat(prompt, images=...)``)
puts its images first, as the model cards' examples (LFM2-VL was trained that way; llama.cpp's
own CLI does the same since PR 17616). The prompt is the model file's own chat template
(:mod:`lfm2_edge.prompt.template`) when it has one that renders; else this built-in ChatML::

    <|startoftext|><|im_start|>system
    You are a helpful multimodal assistant by Liquid AI.<|im_end|>
    <|im_start|>user
    <image>Describe this image.<|im_end|>
    <|im_start|>assistant

The messages are :class:`lfm2_edge.chat.messages.Message` objects (see
:func:`lfm2_edge.chat.messages.normalize_messages`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lfm2_edge.chat.messages import Message
from lfm2_edge.prompt.template import ChatTemplate, TemplateError
from lfm2_edge.prompt.tokens import BOS, IM_END, IM_START, IMAGE_MARKER, Prompt, template
from lfm2_edge.prompt.tools import TOOL_RESPONSE_END, TOOL_RESPONSE_START, format_calls, tools_system_text

__all__ = ["render_prompt"]


def render_prompt(
    messages: Sequence[Message],
    *,
    system_prompt: str | None = None,
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] = (),
    chat_template: ChatTemplate | None = None,
) -> Prompt:
    """Render the prompt, each turn's parts in their order (:meth:`Message.content`).

    With ``chat_template`` (the model file's own, :func:`lfm2_edge.prompt.template.template_of`)
    the prompt is that template's rendering, every content string kept as content; when the
    file has none or it cannot render this conversation, the built-in LFM2 ChatML below is
    used (one notice when verbose).

    A conversation without a system message gets ``system_prompt`` (default: none, as
    transformers' template). With ``tools`` (function definitions) the system turn carries the tool list
    instead, after the conversation's own system message if it has one, as LFM2's chat
    template writes it. Assistant tool calls and ``tool`` results are written in LFM2's
    native format. The returned text holds one :data:`IMAGE_MARKER` per image, in the
    order the images appear across the conversation.

    The result is a :class:`lfm2_edge.prompt.tokens.Prompt`: only the template's own markers
    become control tokens; message text, tool definitions, calls and results are content
    and tokenize as plain text, whatever they spell.
    """
    if chat_template is not None:
        try:
            return chat_template.render(
                messages,
                system_prompt=system_prompt,
                add_generation_prompt=add_generation_prompt,
                tools=tools,
                format_calls=format_calls,
            )
        except TemplateError as exc:
            chat_template.notice(str(exc))
    parts: list[str | tuple[str, bool]] = [template(BOS)]
    has_system = bool(messages) and messages[0].role == "system"
    if tools:
        own = messages[0].text if has_system else None
        parts += [template(f"{IM_START}system\n"), tools_system_text(tools, own), template(f"{IM_END}\n")]
        messages = messages[1:] if has_system else messages
    elif system_prompt is not None and not has_system:
        parts += [template(f"{IM_START}system\n"), system_prompt, template(f"{IM_END}\n")]
    for m in messages:
        parts.append(template(f"{IM_START}{m.role}\n"))
        if m.tool_calls:
            parts.append(format_calls(m.tool_calls))
        if m.role == "tool":
            parts += [template(IMAGE_MARKER * len(m.images)), template(TOOL_RESPONSE_START), m.text]
            parts.append(template(TOOL_RESPONSE_END))
        elif m.parts is None:
            parts += [template(IMAGE_MARKER * len(m.images)), m.text]
        else:
            parts += [template(IMAGE_MARKER) if isinstance(p, int) else p for p in m.parts]
        parts.append(template(f"{IM_END}\n"))
    if add_generation_prompt:
        parts.append(template(f"{IM_START}assistant\n"))
    return Prompt.of(*parts)
