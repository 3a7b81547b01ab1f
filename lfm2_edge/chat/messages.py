"""A conversation as lfm2-edge takes it: :class:`Message` objects, or dicts in the
OpenAI message shape (``content`` a string or a list of ``text`` / ``image_url`` /
``image`` parts), normalised by :func:`normalize_messages`.

This is the library's own message shape (borrowed from OpenAI's because apps already
build it); the server's wire format is translated into it at the edge (:mod:`lfm2_edge.openai`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from lfm2_edge.chat.images import is_single_image
from lfm2_edge.errors import InvalidParameterError

__all__ = ["ROLES", "Message", "MessageInput", "conversation_images", "image_url_of", "normalize_messages"]

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Message:
    """One chat turn. ``images`` holds anything :func:`lfm2_edge.chat.images.load_image` takes.

    ``parts`` is the order the turn's content was given in: a ``str`` for a text part, an
    ``int`` for ``images[i]``; ``None`` (a message built from text and images, as the CLI's
    ``-i ... -p ...``) puts the images first, then the text, as the model cards' examples.
    ``text`` is always the text parts joined.
    """

    role: str
    text: str = ""
    images: list[Any] = field(default_factory=list)
    tool_calls: list[Any] = field(default_factory=list)  # an assistant turn's calls, OpenAI shape
    parts: list[str | int] | None = None

    def content(self) -> list[str | int]:
        """The turn's content in prompt order: text (``str``) and image indexes (``int``)."""
        if self.parts is None:
            return [*range(len(self.images)), *([self.text] if self.text else [])]
        return list(self.parts)


MessageInput = Union[Message, Mapping[str, Any]]


def image_url_of(part: Mapping[str, Any]) -> Any:
    """The URL of an ``image_url`` part (``{"url": ...}`` or a bare string), or None."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, Mapping) else ref
    return url if isinstance(url, str) and url else None


def _image_of(part: Mapping[str, Any]) -> Any:
    if part.get("type") == "image_url":
        url = image_url_of(part)
        if url is None:
            raise InvalidParameterError(
                "an image_url part needs a 'url' string (a data: URI or http(s) URL)", param="messages"
            )
        return url
    image = part.get("image")
    if image is None:
        raise InvalidParameterError("an image part needs an 'image' value (path, bytes or PIL image)", param="messages")
    return image


def _to_message(raw: MessageInput) -> Message:
    if isinstance(raw, Message):
        parts = list(raw.parts) if raw.parts is not None else None
        return Message(raw.role, raw.text, list(raw.images), list(raw.tool_calls), parts)
    role = raw.get("role")
    if role not in ROLES:
        raise InvalidParameterError(f"message role must be one of {', '.join(ROLES)}, got {role!r}", param="messages")
    calls = raw.get("tool_calls") or []
    if calls and (role != "assistant" or not isinstance(calls, Sequence)):
        raise InvalidParameterError("tool_calls belong in an assistant message, as a list", param="messages")
    content = raw.get("content")
    if content is None:
        return Message(role, tool_calls=list(calls))
    if isinstance(content, str):
        return Message(role, content, tool_calls=list(calls))
    if not isinstance(content, Sequence):
        raise InvalidParameterError("message content must be a string or a list of content parts", param="messages")
    texts: list[str] = []
    images: list[Any] = []
    order: list[str | int] = []  # the parts as given: text as is, images by index
    for part in content:
        if not isinstance(part, Mapping):
            raise InvalidParameterError("each content part must be an object with a 'type'", param="messages")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
            order.append(texts[-1])
        elif kind in ("image_url", "image"):
            order.append(len(images))
            images.append(_image_of(part))
        else:
            raise InvalidParameterError(
                f"unsupported content part type {kind!r}; use 'text' or 'image_url'", param="messages"
            )
    return Message(role, "".join(texts), images, list(calls), order)


def _attach(message: Message, images: Sequence[Any]) -> None:
    """Put ``images`` at the start of ``message``'s turn, after the images already there."""
    if message.parts is None:
        message.images = [*message.images, *images]
        return
    lead = 0
    while lead < len(message.parts) and isinstance(message.parts[lead], int):
        lead += 1
    n = len(images)
    # images keeps prompt order: the leading images, the new ones, then the rest
    shifted = [p + n if isinstance(p, int) and p >= lead else p for p in message.parts[lead:]]
    message.parts = [*message.parts[:lead], *range(lead, lead + n), *shifted]
    message.images = [*message.images[:lead], *images, *message.images[lead:]]


def normalize_messages(
    prompt_or_messages: str | Sequence[MessageInput],
    images: Sequence[Any] | Any | None = None,
) -> list[Message]:
    """Turn a prompt string or a message list into :class:`Message` objects.

    ``images`` given beside the messages join the last user turn, ahead of its text:
    one image (a path, bytes, a PIL image, a numpy array, a file object) or a sequence.
    Content parts keep the order they were given in (``Message.parts``).
    """
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
            raise InvalidParameterError("images need a user message to attach to", param="messages")
        _attach(users[-1], images)
    for m in messages:
        if m.images and m.role != "user":
            raise InvalidParameterError(
                f"images can only be sent in user turns, not in a {m.role} turn", param="messages"
            )
    if not messages:
        raise InvalidParameterError("the conversation is empty; send at least one user message", param="messages")
    return messages


def conversation_images(messages: Sequence[Message]) -> list[Any]:
    """The images of a conversation in prompt order (one per :data:`IMAGE_MARKER`)."""
    return [image for m in messages for image in m.images]
