"""``ChatSession``: one conversation with a model, kept between turns.

The model reuses its evaluated state whenever a prompt extends an earlier one, so a
session only has to keep the history and send it whole each turn: turn 2 evaluates
the new tokens and does not encode the image again.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Literal, overload

from lfm2_edge.results import ChatModel, ChatResult, ChatStream, StreamClosed

__all__ = ["ChatSession"]


class ChatSession:
    """A conversation: ``send`` a user turn, get the answer, and the history grows.

    >>> session = ChatSession(model)
    >>> session.send("What is in this image?", images=["cat.jpg"]).text
    >>> session.send("What colour is it?").text   # the image is not encoded again
    """

    def __init__(self, model: ChatModel) -> None:
        self.model = model
        self.messages: list[dict[str, Any]] = []

    @overload
    def send(
        self, text: str, images: Sequence[Any] = ..., *, stream: Literal[False] = ..., **sampling: Any
    ) -> ChatResult: ...

    @overload
    def send(self, text: str, images: Sequence[Any] = ..., *, stream: Literal[True], **sampling: Any) -> ChatStream: ...

    def send(
        self, text: str, images: Sequence[Any] = (), *, stream: bool = False, **sampling: Any
    ) -> ChatResult | ChatStream:
        """Add a user turn (images before its text) and answer it.

        With ``stream=True`` the answer joins the history once the stream ends or is
        closed, with the text produced so far.
        """
        turn = {
            "role": "user",
            "content": [*({"type": "image", "image": im} for im in images), {"type": "text", "text": text}],
        }
        if not stream:
            result = self.model.chat([*self.messages, turn], **sampling)
            self.messages += [turn, {"role": "assistant", "content": result.text}]
            return result
        inner = self.model.chat([*self.messages, turn], stream=True, **sampling)
        return ChatStream(self._record(turn, inner))

    def _record(self, turn: dict[str, Any], inner: ChatStream) -> Generator[str, None, ChatResult | None]:
        pieces: list[str] = []
        try:
            for piece in inner:
                pieces.append(piece)
                try:
                    yield piece
                except StreamClosed:
                    break
        finally:
            inner.close()
            self.messages += [turn, {"role": "assistant", "content": "".join(pieces)}]
        return inner.result

    def reset(self) -> None:
        """Start a new conversation (the model's saved states stay for other sessions)."""
        self.messages.clear()
