"""LFM2's special tokens, spelled once.

The prompt renderer, the tool-call parser, the runtime and the synthetic models' vocabulary
all name these; :data:`SPECIAL_TOKENS` is the full list, in the order the synthetic
vocabulary gives them ids.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BOS",
    "EOS",
    "IMAGE_END",
    "IMAGE_MARKER",
    "IMAGE_START",
    "IMAGE_THUMBNAIL",
    "IM_END",
    "IM_START",
    "PAD",
    "SPECIAL_TOKENS",
    "SPECIAL_TOOL_TOKENS",
    "TEMPLATE_MARKERS",
    "TOOL_CALL_END",
    "TOOL_CALL_START",
    "TOOL_LIST_END",
    "TOOL_LIST_START",
    "TOOL_RESPONSE_END",
    "TOOL_RESPONSE_START",
    "Prompt",
    "template",
    "tile_token",
]

PAD = "<|pad|>"
BOS = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
FIM = ("<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>")
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EOS = IM_END  # a chat turn ends generation
TOOL_LIST_START, TOOL_LIST_END = "<|tool_list_start|>", "<|tool_list_end|>"
TOOL_CALL_START, TOOL_CALL_END = "<|tool_call_start|>", "<|tool_call_end|>"
TOOL_RESPONSE_START, TOOL_RESPONSE_END = "<|tool_response_start|>", "<|tool_response_end|>"
SPECIAL_TOOL_TOKENS = (TOOL_LIST_START, TOOL_LIST_END, TOOL_CALL_START, TOOL_CALL_END)
IMAGE_MARKER = "<image>"
IMAGE_START, IMAGE_END = "<|image_start|>", "<|image_end|>"
IMAGE_THUMBNAIL = "<|img_thumbnail|>"
MAX_TILE_GRID = 10  # tiles are named up to row 10, column 10


def tile_token(row: int, col: int) -> str:
    """The marker of the image tile at ``row``, ``col`` (both from 1)."""
    return f"<|img_row_{row}_col_{col}|>"


SPECIAL_TOKENS: tuple[str, ...] = (
    PAD,
    BOS,
    END_OF_TEXT,
    *FIM,
    IM_START,
    IM_END,
    TOOL_LIST_START,
    TOOL_LIST_END,
    TOOL_CALL_START,
    TOOL_CALL_END,
    TOOL_RESPONSE_START,
    TOOL_RESPONSE_END,
    IMAGE_MARKER,
    IMAGE_START,
    IMAGE_END,
    IMAGE_THUMBNAIL,
    *(tile_token(r, c) for r in range(1, MAX_TILE_GRID + 1) for c in range(1, MAX_TILE_GRID + 1)),
)

# The markers a chat template writes itself: in template text they are control tokens;
# in content (what users, tools and files say) they are plain text.
TEMPLATE_MARKERS: tuple[str, ...] = (
    BOS,
    IM_START,
    IM_END,
    IMAGE_MARKER,
    TOOL_LIST_START,
    TOOL_LIST_END,
    TOOL_CALL_START,
    TOOL_CALL_END,
    TOOL_RESPONSE_START,
    TOOL_RESPONSE_END,
)


class Prompt(str):
    """Prompt text that remembers which parts are the template's own and which are
    content. Only template parts may spell control tokens (``<|im_start|>``, the image
    marker, tool markers); content always tokenizes as plain text, so no user, tool
    result or file can forge a turn. It is a ``str``: printing or comparing it sees the
    whole text."""

    segments: tuple[tuple[str, bool], ...]  # (text, is_template)

    def __new__(cls, segments: Iterable[tuple[str, bool]]) -> Prompt:
        kept = tuple((text, is_template) for text, is_template in segments if text)
        prompt = super().__new__(cls, "".join(text for text, _ in kept))
        prompt.segments = kept
        return prompt

    @classmethod
    def of(cls, *parts: str | tuple[str, bool]) -> Prompt:
        """Join parts: a plain ``str`` is content; a :class:`Prompt` keeps its segments;
        ``template(text)`` marks template text."""
        segments: list[tuple[str, bool]] = []
        for part in parts:
            if isinstance(part, Prompt):
                segments.extend(part.segments)
            elif isinstance(part, tuple):
                segments.append(part)
            else:
                segments.append((part, False))
        return cls(segments)


def template(text: str) -> tuple[str, bool]:
    """A part of a prompt the template itself writes (its markers are control tokens)."""
    return (text, True)
