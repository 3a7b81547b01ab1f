"""Evaluating a prompt, reusing saved conversation states.

LFM2's short-conv state cannot be rolled back, so only a state whose whole history is a
prefix of the new prompt can be continued. :func:`prefill` loads the saved state that
covers the longest part of the prompt, evaluates the rest, and saves states at
:meth:`Runtime.save_points` (after the prompt's last image, and at its end), which the
next turn, a regenerated answer and a new question about the same image all extend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lfm2_edge._llama.context import Runtime
from lfm2_edge._llama.state import SavedState
from lfm2_edge.caches import Item, StateCache
from lfm2_edge.images import LoadedImage

__all__ = ["Prefill", "prefill"]


@dataclass(frozen=True)
class Prefill:
    """What evaluating a prompt did."""

    n_prompt: int  # positions in the prompt
    n_image_tokens: int
    cached_tokens: int  # positions a saved state already held
    image_s: float  # seconds spent on image tiles
    resumed: SavedState | None  # the state whose saved logits the first token is sampled from


def prefill(rt: Runtime, states: StateCache, prompt: str, images: Sequence[LoadedImage]) -> Prefill:
    """Make ``rt``'s context hold ``prompt`` (with ``images``), ready to sample the answer.

    On any error the context is cleared, so the next call starts clean.
    """
    with rt.tokenize_prompt(prompt, images) as chunks:
        try:
            items = rt.prompt_items(chunks, [im.digest for im in images])
            rt.check_fits(chunks.n_pos, len(images), chunks.n_image_tokens)
            start, resumed = _restore_prefix(rt, states, items)
            cached_tokens = rt.positions(items[:start])
            image_s = 0.0
            done = start
            for point in rt.save_points(items):
                if point <= done:
                    continue
                image_s += rt.eval_items(chunks, items, done, point)
                done = point
                if states.max_bytes:
                    state = rt.save_state(with_logits=point == len(items))
                    states.put(tuple(items[:point]), state, state.nbytes)
        except BaseException:
            rt.reset()
            raise
    return Prefill(chunks.n_pos, chunks.n_image_tokens, cached_tokens, image_s, resumed)


def _restore_prefix(rt: Runtime, states: StateCache, items: list[Item]) -> tuple[int, SavedState | None]:
    """Load the saved state that covers the longest part of ``items``.

    Returns how many leading items the context now holds (0: it was cleared) and,
    when that is all of them, the state whose saved logits the first token is
    sampled from.
    """
    saved = states.longest_prefix_of(items)
    if saved is not None:
        key, state = saved
        if rt.load_state(state, rt.positions(key)):
            return len(key), (state if len(key) == len(items) else None)
    rt.reset()
    return 0, None
