"""Scans of a model's whole vocabulary, done once per model."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import llama_cpp

__all__ = ["longest_token_bytes", "partial_utf8_tokens"]


def longest_token_bytes(vocab: int, n_vocab: int) -> int:
    """The longest text any one token stands for (special tokens included, as a
    prompt's text is tokenized with them): a prompt of N bytes has at least N / this
    many tokens."""
    buf, longest = ctypes.create_string_buffer(256), 1
    for t in range(n_vocab):
        n = llama_cpp.llama_token_to_piece(vocab, t, buf, 256, 0, True)
        longest = max(longest, n if n >= 0 else -n)
    return longest


def partial_utf8_tokens(token_bytes: Callable[[int], bytes], n_vocab: int) -> list[int]:
    """Tokens whose text is not valid UTF-8 on its own (byte-level pieces)."""
    bad = []
    for t in range(n_vocab):
        try:
            token_bytes(t).decode("utf-8")
        except UnicodeDecodeError:
            bad.append(t)
    return bad
