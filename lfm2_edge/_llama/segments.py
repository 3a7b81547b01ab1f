"""A rendered prompt into token runs, with control tokens only where the template put them.

llama.cpp's tokenizer, asked to parse special tokens, turns every ``<|im_start|>`` it
finds into a control token, also inside a user's message. Here only the template's own
markers (:data:`lfm2_edge.prompt.tokens.TEMPLATE_MARKERS`, in the template parts of a
:class:`lfm2_edge.prompt.tokens.Prompt`) become control tokens; the text between them, content
included, is tokenized as plain text. For a prompt whose content spells no marker the
tokens are exactly those of parsing the whole text with special tokens on: llama.cpp
also splits at the markers and tokenizes each run of text between them on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from lfm2_edge.prompt.tokens import IMAGE_MARKER, TEMPLATE_MARKERS

__all__ = ["MarkerTable", "token_runs"]


class MarkerTable:
    """The template markers a vocabulary has as single tokens, and a pattern to find them."""

    def __init__(self, token_id: Callable[[str], int | None]) -> None:
        ids = {m: t for m in TEMPLATE_MARKERS if (t := token_id(m)) is not None or m == IMAGE_MARKER}
        self.ids: Mapping[str, int | None] = ids
        self.pattern = re.compile("|".join(re.escape(m) for m in sorted(ids, key=len, reverse=True)))


def token_runs(prompt: str, markers: MarkerTable, tokenize_plain: Callable[[str], list[int]]) -> list[list[int]]:
    """The prompt's tokens, cut at its image markers: ``n_images + 1`` runs.

    A plain ``str`` (not a :class:`~lfm2_edge.prompt.tokens.Prompt`) is all template.
    """
    segments = getattr(prompt, "segments", ((prompt, True),))
    runs: list[list[int]] = [[]]
    plain: list[str] = []

    def flush() -> None:
        if plain:
            runs[-1].extend(tokenize_plain("".join(plain)))
            plain.clear()

    for text, is_template in segments:
        if not is_template:
            plain.append(text)
            continue
        pos = 0
        for found in markers.pattern.finditer(text):
            plain.append(text[pos : found.start()])
            pos = found.end()
            flush()
            token = markers.ids[found.group()]
            if token is None or found.group() == IMAGE_MARKER:
                runs.append([])
            else:
                runs[-1].append(token)
        plain.append(text[pos:])
    flush()
    return runs
