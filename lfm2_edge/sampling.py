"""Sampling settings.

Kept apart from the model classes so that the catalog and the CLI can name presets
without loading llama.cpp. The model families' presets are the catalog's
(:data:`lfm2_edge.catalog.VL_SAMPLING`, :data:`lfm2_edge.catalog.TEXT_SAMPLING`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from lfm2_edge.errors import Lfm2EdgeError

__all__ = ["Sampling"]

LogitBias = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; the defaults are the LFM2-VL model card's.

    ``presence_penalty`` and ``frequency_penalty`` (-2..2) are OpenAI's: subtracted from
    the logit of every token the answer already holds, once (presence) or once per
    occurrence (frequency), over the whole answer (not the prompt). ``logit_bias`` maps
    token ids to a bias (-100..100) added to their logits; -100 bans a token, +100 all but
    forces it. A mapping is accepted and kept as sorted ``(token, bias)`` pairs.
    """

    temperature: float = 0.1
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.15
    repetition_penalty: float = 1.05
    seed: int | None = None
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: LogitBias = ()

    def __post_init__(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -2.0 <= value <= 2.0:
                raise Lfm2EdgeError(f"{name} must be a number from -2 to 2, not {value!r}")
        object.__setattr__(self, "logit_bias", _logit_bias(self.logit_bias))

    def updated(self, **overrides: Any) -> Sampling:
        """A copy with the given fields replaced; ``None`` values keep the default."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        if isinstance(given.get("stop"), str):
            given["stop"] = (given["stop"],)
        elif "stop" in given:
            given["stop"] = tuple(given["stop"])
        return replace(self, **given)

    def check_vocabulary(self, n_vocab: int) -> None:
        """Refuse a ``logit_bias`` that names a token the model's vocabulary lacks."""
        bad = [t for t, _ in self.logit_bias if t >= n_vocab]
        if bad:
            raise Lfm2EdgeError(
                f"logit_bias names token id {bad[0]}, outside this model's vocabulary (ids 0 to {n_vocab - 1})"
            )


def _logit_bias(value: Any) -> LogitBias:
    """``{token: bias}`` (keys may be digit strings, as JSON writes them) or pairs, checked
    and sorted by token."""
    pairs = value.items() if isinstance(value, Mapping) else value
    try:
        items = list(pairs)
    except TypeError:
        raise Lfm2EdgeError(f"logit_bias must map token ids to biases, not {value!r}") from None
    out: dict[int, float] = {}
    for item in items:
        try:
            key, bias = item
        except (TypeError, ValueError):
            raise Lfm2EdgeError(f"logit_bias must map token ids to biases, not {value!r}") from None
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            raise Lfm2EdgeError(f"logit_bias keys must be token ids (integers from 0), not {key!r}")
        if (
            isinstance(bias, bool)
            or not isinstance(bias, (int, float))
            or not math.isfinite(bias)
            or not -100 <= bias <= 100
        ):
            raise Lfm2EdgeError(f"logit_bias values must be numbers from -100 to 100, not {bias!r} (token {key})")
        out[key] = float(bias)
    return tuple(sorted(out.items()))
