"""Evaluating a prompt, reusing saved conversation states.

LFM2's short-conv state cannot be rolled back, so only a state whose whole history is a
prefix of the new prompt can be continued. :func:`prefill` loads the saved state that
covers the longest part of the prompt, evaluates the rest, and saves states at the
save points of :class:`~lfm2_edge._llama.cuts.PromptCuts` (after a system prompt, after
the prompt's last image, and at its end), which a new conversation with the same system
prompt, the next turn, a regenerated answer and a new question about the same image all
extend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lfm2_edge._llama.context import Runtime
from lfm2_edge._llama.state import SavedState
from lfm2_edge.caches import Item, StateCache
from lfm2_edge.images import LoadedImage

__all__ = ["Prefill", "prefill", "restore_prefix"]


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
            start, resumed = restore_prefix(
                states, items, lambda key, state: rt.load_state(state, rt.positions(key)), rt.reset
            )
            cached_tokens = rt.positions(items[:start])
            image_s = 0.0
            done = start
            for point in rt.cuts.save_points(items):
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


def restore_prefix(
    states: StateCache,
    items: Sequence[Item],
    load: Callable[[Sequence[Item], SavedState], bool],
    clear: Callable[[], None],
) -> tuple[int, SavedState | None]:
    """Load (with ``load(key, state)``) the saved state that covers the longest part of
    ``items``; ``clear()`` when none does or it is refused.

    Returns how many leading items the sequence now holds (0: it was cleared) and, when
    that is all of them, the state whose saved logits the first token is sampled from.
    The single-sequence path loads into the context's sequence, the batched one
    (:mod:`lfm2_edge.batching`) into whichever sequence a request holds.
    """
    saved = states.longest_prefix_of(items)
    if saved is not None:
        key, state = saved
        if load(key, state):
            return len(key), (state if len(key) == len(items) else None)
    clear()
    return 0, None
