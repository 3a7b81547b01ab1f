"""Sampling settings.

Kept apart from the model classes so that the catalog and the CLI can name presets
without loading llama.cpp. The model families' presets are the catalog's
(:data:`lfm2_edge.catalog.VL_SAMPLING`, :data:`lfm2_edge.catalog.TEXT_SAMPLING`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["Sampling"]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; the defaults are the LFM2-VL model card's."""

    temperature: float = 0.1
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.15
    repetition_penalty: float = 1.05
    seed: int | None = None
    max_tokens: int = 512
    stop: tuple[str, ...] = ()

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
