"""The LFM2 ChatML prompt, with images always before the text of their turn.

LFM2-VL was trained with each image marker *before* the text of its user turn;
quality drops when the marker follows the text (llama.cpp fixed this for its own CLI
in PR 17616). Generic chat handlers keep the order the client sent, so lfm2-edge puts
the image parts first itself. The prompt is the model file's own chat template
(:mod:`lfm2_edge.template`) when it has one that renders; else this built-in ChatML::

    <|startoftext|><|im_start|>system
    You are a helpful multimodal assistant by Liquid AI.<|im_end|>
    <|im_start|>user
    <image>Describe this image.<|im_end|>
    <|im_start|>assistant

Messages come in the OpenAI shape (``content`` a string or a list of ``text`` /
``image_url`` / ``image`` parts) or as :class:`Message` objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from lfm2_edge.catalog import DEFAULT_TEXT_SYSTEM_PROMPT, DEFAULT_VL_SYSTEM_PROMPT
from lfm2_edge.errors import Lfm2EdgeError
from lfm2_edge.template import ChatTemplate, TemplateError
from lfm2_edge.tokens import BOS, IM_END, IM_START, IMAGE_MARKER, Prompt, template

__all__ = [
    "BOS",
    "DEFAULT_TEXT_SYSTEM_PROMPT",
    "DEFAULT_VL_SYSTEM_PROMPT",
    "IMAGE_MARKER",
    "IM_END",
    "IM_START",
    "Message",
    "MessageInput",
    "normalize_messages",
    "render_prompt",
]

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    """One chat turn. ``images`` holds anything :func:`lfm2_edge.images.load_image` takes."""

    role: str
    text: str = ""
    images: list[Any] = field(default_factory=list)
    tool_calls: list[Any] = field(default_factory=list)  # an assistant turn's calls, OpenAI shape


MessageInput = Union[Message, Mapping[str, Any]]


def _image_of(part: Mapping[str, Any]) -> Any:
    if part.get("type") == "image_url":
        from lfm2_edge.wire import image_url_of

        url = image_url_of(part)
        if url is None:
            raise Lfm2EdgeError("an image_url part needs a 'url' string (a data: URI or http(s) URL)")
        return url
    image = part.get("image")
    if image is None:
        raise Lfm2EdgeError("an image part needs an 'image' value (path, bytes or PIL image)")
    return image


def _to_message(raw: MessageInput) -> Message:
    if isinstance(raw, Message):
        return Message(raw.role, raw.text, list(raw.images), list(raw.tool_calls))
    role = raw.get("role")
    if role not in ROLES:
        raise Lfm2EdgeError(f"message role must be one of {', '.join(ROLES)}, got {role!r}")
    calls = raw.get("tool_calls") or []
    if calls and (role != "assistant" or not isinstance(calls, Sequence)):
        raise Lfm2EdgeError("tool_calls belong in an assistant message, as a list")
    content = raw.get("content")
    if content is None:
        return Message(role, tool_calls=list(calls))
    if isinstance(content, str):
        return Message(role, content, tool_calls=list(calls))
    if not isinstance(content, Sequence):
        raise Lfm2EdgeError("message content must be a string or a list of content parts")
    texts: list[str] = []
    images: list[Any] = []
    for part in content:
        if not isinstance(part, Mapping):
            raise Lfm2EdgeError("each content part must be an object with a 'type'")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind in ("image_url", "image"):
            images.append(_image_of(part))
        else:
            raise Lfm2EdgeError(f"unsupported content part type {kind!r}; use 'text' or 'image_url'")
    return Message(role, "".join(texts), images, list(calls))


def normalize_messages(
    prompt_or_messages: str | Sequence[MessageInput],
    images: Sequence[Any] | Any | None = None,
) -> list[Message]:
    """Turn a prompt string or a message list into :class:`Message` objects.

    ``images`` given beside the messages join the last user turn, ahead of its text:
    one image (a path, bytes, a PIL image, a numpy array, a file object) or a sequence.
    """
    from lfm2_edge.images import is_single_image

    if images is not None and is_single_image(images):
        images = [images]
    elif images is not None and not isinstance(images, Sequence):
        images = list(images)  # a generator or another iterable of images
    if isinstance(prompt_or_messages, str):
        messages = [Message("user", prompt_or_messages)]
    else:
        messages = [_to_message(m) for m in prompt_or_messages]
    if images:
        users = [m for m in messages if m.role == "user"]
        if not users:
            raise Lfm2EdgeError("images need a user message to attach to")
        users[-1].images = [*users[-1].images, *images]
    for m in messages:
        if m.images and m.role != "user":
            raise Lfm2EdgeError(f"images can only be sent in user turns, not in a {m.role} turn")
    if not messages:
        raise Lfm2EdgeError("the conversation is empty; send at least one user message")
    return messages


def render_prompt(
    messages: Sequence[Message],
    *,
    system_prompt: str | None = DEFAULT_VL_SYSTEM_PROMPT,
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] = (),
    chat_template: ChatTemplate | None = None,
) -> Prompt:
    """Render the prompt with every image marker at the start of its turn.

    With ``chat_template`` (the model file's own, :func:`lfm2_edge.template.template_of`)
    the prompt is that template's rendering, image parts first in their turn and every
    content string kept as content; when the file has none or it cannot render this
    conversation, the built-in LFM2 ChatML below is used (one notice when verbose).

    A conversation without a system message gets ``system_prompt`` (pass ``None`` for
    none). With ``tools`` (function definitions) the system turn carries the tool list
    instead, after the conversation's own system message if it has one, as LFM2's chat
    template writes it. Assistant tool calls and ``tool`` results are written in LFM2's
    native format. The returned text holds one :data:`IMAGE_MARKER` per image, in the
    order the images appear across the conversation.

    The result is a :class:`lfm2_edge.tokens.Prompt`: only the template's own markers
    become control tokens; message text, tool definitions, calls and results are content
    and tokenize as plain text, whatever they spell.
    """
    from lfm2_edge.tools import TOOL_RESPONSE_END, TOOL_RESPONSE_START, format_calls, tools_system_text

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
        parts.append(template(f"{IM_START}{m.role}\n{IMAGE_MARKER * len(m.images)}"))
        if m.tool_calls:
            parts.append(format_calls(m.tool_calls))
        if m.role == "tool":
            parts += [template(TOOL_RESPONSE_START), m.text, template(TOOL_RESPONSE_END)]
        else:
            parts.append(m.text)
        parts.append(template(f"{IM_END}\n"))
    if add_generation_prompt:
        parts.append(template(f"{IM_START}assistant\n"))
    return Prompt.of(*parts)


def conversation_images(messages: Sequence[Message]) -> list[Any]:
    """The images of a conversation in prompt order (one per :data:`IMAGE_MARKER`)."""
    return [image for m in messages for image in m.images]
