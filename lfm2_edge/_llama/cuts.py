"""Where a prompt is cut into ``llama_decode`` batches, and where its states are saved.

llama.cpp's CPU kernels round differently for different batch shapes, so a prompt's
batches must depend on its content only: then a state saved at a cut and continued gives
bit-for-bit the logits a fresh context gives. Every rule here depends only on the tokens
before the cut, so a prompt that extends a saved state's history is cut there too.
"""

from __future__ import annotations

from collections.abc import Sequence

from lfm2_edge._llama.caches import Item

__all__ = ["PromptCuts"]


class PromptCuts:
    """The cut rules for one vocabulary: after each ``<|im_start|>assistant\\n`` header,
    and at each :meth:`save_point <save_points>`."""

    def __init__(self, assistant_header: list[int], system_header: list[int], im_end: int | None, newline: int | None):
        self.assistant_header, self.system_header = assistant_header, system_header
        self.im_end, self.newline = im_end, newline

    def _ends_assistant_header(self, items: Sequence[Item], j: int) -> bool:
        """Whether ``items[:j]`` ends with ``<|im_start|>assistant\\n``."""
        head = self.assistant_header
        n = len(head)
        return j >= n and items[j - 1] == head[-1] and list(items[j - n : j]) == head

    def pieces(self, tokens: Sequence[int], lo: int, hi: int) -> list[tuple[int, int]]:
        """``tokens[lo:hi]`` cut after each assistant header: each piece's (start, end).
        Both evaluation paths split a piece further every ``n_batch`` tokens."""
        hi = min(hi, len(tokens))
        out, cut = [], lo
        for j in range(lo + 1, hi):
            if self._ends_assistant_header(tokens, j):
                out.append((cut, j))
                cut = j
        out.append((cut, hi))
        return out

    def save_points(self, items: Sequence[Item]) -> list[int]:
        """Where a saved state is worth having (and so where the prompt is cut): after a
        leading system message (every conversation with that system prompt continues from
        there), after the last image (a new question about it continues from there; an
        image is a batch of its own anyway) and at the end (the next turn, a regenerated
        answer; it ends with an assistant header)."""
        points = {len(items)}
        if (system_end := self._system_end(items)) is not None:
            points.add(system_end)
        for j in range(len(items) - 1, -1, -1):
            if not isinstance(items[j], int):
                points.add(j + 1)
                break
        return sorted(p for p in points if 0 < p <= len(items))

    def _system_end(self, items: Sequence[Item]) -> int | None:
        """Just after the ``<|im_end|>\\n`` of the prompt's first message, when that is a
        system message."""
        head = self.system_header
        start = 0 if len(items) and items[0] == head[0] else 1  # else after <|startoftext|>
        if self.im_end is None or list(items[start : start + len(head)]) != head:
            return None
        for j in range(start + len(head), len(items)):
            if items[j] == self.im_end:
                j += 1
                return j + 1 if j < len(items) and items[j] == self.newline else j
        return None
