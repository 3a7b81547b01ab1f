"""The synthetic models' byte-level BPE vocabulary."""

from __future__ import annotations

from lfm2_edge.prompt.tokens import IMAGE_END, IMAGE_MARKER, IMAGE_START, IMAGE_THUMBNAIL, SPECIAL_TOKENS, tile_token

__all__ = ["OFFICIAL_IMAGE_ID", "build_vocab"]

# gguf token types (gguf.TokenType), spelled out so the writer's enum names don't matter.
_NORMAL, _CONTROL = 1, 3


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


# Where the official LFM2 vocabulary puts its special tokens: the chat and tool markers at
# 0..13, reserved control tokens up to the LFM2-VL image tokens, <image> at 396.
OFFICIAL_IMAGE_ID = 396


def _official_specials() -> list[str]:
    chat = list(SPECIAL_TOKENS[: SPECIAL_TOKENS.index(IMAGE_MARKER)])  # <|pad|> .. <|tool_response_end|>
    image = [IMAGE_MARKER, *(tile_token(r, c) for r in range(1, 11) for c in range(1, 11))]
    image += [IMAGE_THUMBNAIL, IMAGE_START, IMAGE_END]
    reserved = [f"<|reserved_{i}|>" for i in range(OFFICIAL_IMAGE_ID - len(chat))]
    return chat + reserved + image


def build_vocab(n_vocab: int, *, official_ids: bool = False) -> tuple[list[str], list[int], list[str]]:
    """Return (tokens, token types, merges) of a byte-level BPE vocabulary.

    Every byte has a token, so any text tokenizes; letter pairs (with and without a
    leading space) are merged so that English takes fewer tokens than bytes, as with
    a real tokenizer. The rest of ``n_vocab`` is filled with unreachable tokens.
    ``official_ids`` puts the special tokens at the official files' ids.
    """
    tokens: list[str] = _official_specials() if official_ids else list(SPECIAL_TOKENS)
    types: list[int] = [_CONTROL] * len(tokens)
    byte_chars = list(_bytes_to_unicode().values())
    tokens += byte_chars
    types += [_NORMAL] * len(byte_chars)
    merges: list[str] = []
    space = _bytes_to_unicode()[ord(" ")]
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    budget = n_vocab - len(tokens)
    firsts = [space, *letters]
    for a in firsts:
        for b in letters:
            if len(merges) >= budget // 2:
                break
            merges.append(f"{a} {b}")
            tokens.append(a + b)
            types.append(_NORMAL)
    if len(tokens) > n_vocab:
        raise ValueError(f"n_vocab={n_vocab} is too small for the special and byte tokens")
    tokens += [f"[unused{i}]" for i in range(n_vocab - len(tokens))]
    types += [_NORMAL] * (n_vocab - len(types))
    return tokens, types, merges
