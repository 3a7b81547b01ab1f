"""A model's vocabulary: text to tokens and a token back to its bytes, and the scans of
the whole vocabulary done once per model."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import llama_cpp

from lfm2_edge.errors import GenerationError

__all__ = ["longest_token_bytes", "partial_utf8_tokens", "token_piece", "tokenize"]


def tokenize(vocab: int, text: str, *, special: bool = True) -> list[int]:
    data = text.encode("utf-8")
    n_max = len(data) + 8
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, n_max, False, special)
    if n < 0:
        raise GenerationError(f"could not tokenize {len(data)} bytes of text")
    return list(buf[:n])


def token_piece(vocab: int, token: int, buf: ctypes.Array[ctypes.c_char], *, special: bool) -> bytes:
    """The text of ``token``, written into ``buf`` (256 bytes) when it fits."""
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, 256, 0, special)
    if n < 0:
        big = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, big, -n, 0, special)
        return big.raw[:n]
    return buf.raw[:n]


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
