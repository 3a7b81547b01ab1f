"""``ChatSession``: one conversation with a model, kept between turns.

The model reuses its evaluated state whenever a prompt extends an earlier one, so a
session only has to keep the history and send it whole each turn: turn 2 evaluates
the new tokens and does not encode the image again.

When the history no longer fits the context, the session drops its oldest turns (never
the system message, never the turn being sent) and tries again; the images the
conversation last referred to move onto the oldest turn kept, so a follow-up question
about an image still sees it. A turn that fails or is stopped is not recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any, Literal, overload

from lfm2_edge.chat.contract import ChatModel
from lfm2_edge.chat.results import ChatResult, ChatStream, StreamClosed, Thought
from lfm2_edge.errors import ContextOverflowError

__all__ = ["ChatSession"]

Messages = list[dict[str, Any]]
_IMAGE_PARTS = ("image", "image_url")


class ChatSession:
    """A conversation: ``send`` a user turn, get the answer, and the history grows.

    >>> session = ChatSession(model)
    >>> session.send("What is in this image?", images=["cat.jpg"]).text
    >>> session.send("What colour is it?").text   # the image is not encoded again

    ``system`` starts the history with a system message (else the model's own system
    prompt applies); :meth:`reset` keeps it.

    ``trim`` (default ``True``): when a turn raises
    :class:`~lfm2_edge.errors.ContextOverflowError`, drop the oldest turns (a user
    message and its answer each) and try again, until the turn fits; the system message
    and the turn being sent are never dropped, and the images of the latest turn that
    had any are kept (moved onto the oldest turn left). When the new turn does not fit
    even alone, the error is raised and the history is left as it was. ``on_trim(n)`` is
    called with the number of turns dropped, before the answer starts; ``dropped_turns``
    counts them all since the session began or was reset. With ``trim=False`` the error
    is raised at once and the history is unchanged.

    A turn is recorded only when its answer is complete: a turn that raises, or a stream
    closed before its end (``close()``, Ctrl-C), leaves no trace in the history (turns
    dropped to make room for it stay dropped: they did not fit with it).
    """

    def __init__(
        self,
        model: ChatModel,
        *,
        system: str | None = None,
        trim: bool = True,
        on_trim: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.system = system
        self.trim = trim
        self.on_trim = on_trim
        self.dropped_turns = 0
        self.messages: Messages = []
        self.reset()

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

        With ``stream=True`` the turn and its answer join the history once the stream
        has been read to its end; a stream closed early is not recorded. A context
        overflow is raised (or trimmed away) on the stream's first ``next()``.
        """
        turn = {
            "role": "user",
            "content": [*({"type": "image", "image": im} for im in images), {"type": "text", "text": text}],
        }
        if stream:  # a bad image or message is raised here, an overflow on the first next()
            inner = self.model.chat([*self.messages, turn], stream=True, **sampling)
            return ChatStream(self._streamed(turn, inner, sampling))
        history, new = list(self.messages), turn
        while True:
            try:
                result = self.model.chat([*history, new], **sampling)
            except ContextOverflowError as exc:
                history, new = self._trimmed_or_raise(exc, history, new)
                continue
            self._accept(history)
            self._record(new, result.text)
            return result

    def _streamed(
        self, turn: dict[str, Any], inner: ChatStream, sampling: dict[str, Any]
    ) -> Generator[str, None, ChatResult | None]:
        history, new = list(self.messages), turn
        inner.with_thoughts()  # a thinking model's thoughts go on to this stream's listener
        while True:
            try:
                first = next(inner)
            except ContextOverflowError as exc:
                history, new = self._trimmed_or_raise(exc, history, new)
                inner = self.model.chat([*history, new], stream=True, **sampling).with_thoughts()
                continue
            except StopIteration:  # an empty answer
                first = None
            break
        self._accept(history)
        try:
            pieces = [] if first is None or isinstance(first, Thought) else [first]
            if first is not None:
                yield first
            for piece in inner:
                if not isinstance(piece, Thought):  # the history keeps the answer, not the thought
                    pieces.append(piece)
                yield piece
        except StreamClosed:
            inner.close()
            return inner.result  # stopped: not recorded
        finally:
            inner.close()  # a no-op once it ended; frees the model when the stream fails
        self._record(new, "".join(pieces))
        return inner.result

    def _trimmed_or_raise(
        self, overflow: ContextOverflowError, history: Messages, new: dict[str, Any]
    ) -> tuple[Messages, dict[str, Any]]:
        """The history and new turn with the oldest turn dropped, or re-raise the
        overflow when trimming is off or nothing is left to drop."""
        head = _leading_system(history)
        body = history[len(head) :]
        if not self.trim or not body:
            raise overflow
        cut = next((i for i in range(1, len(body)) if body[i].get("role") == "user"), len(body))
        dropped, kept = body[:cut], body[cut:]
        carried = _last_images(dropped) if not any(_images(m) for m in [*kept, new]) else []
        if carried:
            target = next((i for i, m in enumerate(kept) if m.get("role") == "user"), None)
            if target is None:
                new = _with_images(new, carried)
            else:
                kept = [*kept[:target], _with_images(kept[target], carried), *kept[target + 1 :]]
        return [*head, *kept], new

    def _accept(self, history: Messages) -> None:
        """The turn fits with ``history``: make it the session's, and report what was dropped."""
        dropped = _count_turns(self.messages) - _count_turns(history)
        if dropped > 0:
            self.messages = history
            self.dropped_turns += dropped
            if self.on_trim is not None:
                self.on_trim(dropped)

    def _record(self, turn: dict[str, Any], answer: str) -> None:
        self.messages += [turn, {"role": "assistant", "content": answer}]

    def reset(self) -> None:
        """Start a new conversation (the model's saved states stay for other sessions);
        the ``system`` message stays."""
        self.messages = [{"role": "system", "content": self.system}] if self.system is not None else []
        self.dropped_turns = 0


def _leading_system(messages: Messages) -> Messages:
    head: Messages = []
    for m in messages:
        if m.get("role") != "system":
            break
        head.append(m)
    return head


def _count_turns(messages: Messages) -> int:
    body = messages[len(_leading_system(messages)) :]
    return sum(1 for i, m in enumerate(body) if i == 0 or m.get("role") == "user")


def _images(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str) or not isinstance(content, Sequence):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") in _IMAGE_PARTS]


def _last_images(messages: Messages) -> list[dict[str, Any]]:
    for m in reversed(messages):
        if found := _images(m):
            return found
    return []


def _with_images(message: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    content = message.get("content")
    rest = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
    return {**message, "content": [*parts, *rest]}
