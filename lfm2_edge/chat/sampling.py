"""Sampling settings.

Kept apart from the model classes so that the catalog and the CLI can name presets
without loading llama.cpp. The model families' presets are the catalog's
(:data:`lfm2_edge.hub.catalog.VL_SAMPLING`, :data:`lfm2_edge.hub.catalog.TEXT_SAMPLING`).

Every value is checked against :data:`RULES` (the ranges OpenAI's API accepts), so a
wrong option is one :class:`~lfm2_edge.errors.InvalidParameterError` line at the call,
not a ``TypeError`` from deep inside llama.cpp's bindings. A new field adds one rule.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from lfm2_edge.errors import InvalidParameterError

__all__ = ["RULES", "LogitBias", "Rule", "Sampling"]

LogitBias = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Rule:
    """What one sampling field accepts: a kind (``"float"``, ``"int"``, ``"seed"``,
    ``"stop"``) and, for numbers, a range check with the words that describe it."""

    kind: str
    check: Callable[[float], bool] | None = None
    expects: str = ""


def _in(low: float, high: float) -> Callable[[float], bool]:
    return lambda v: low <= v <= high


RULES: dict[str, Rule] = {
    "temperature": Rule("float", _in(0.0, 2.0), "between 0 and 2"),
    "top_p": Rule("float", _in(0.0, 1.0), "between 0 and 1"),
    "top_k": Rule("int", lambda v: v >= 0, "0 (off) or more"),
    "min_p": Rule("float", _in(0.0, 1.0), "between 0 and 1"),
    "repetition_penalty": Rule("float", lambda v: v > 0, "above 0 (1 is off)"),
    "seed": Rule("seed"),
    "max_tokens": Rule("int", lambda v: v >= 1, "at least 1"),
    "stop": Rule("stop"),
    "presence_penalty": Rule("float", _in(-2.0, 2.0), "between -2 and 2"),
    "frequency_penalty": Rule("float", _in(-2.0, 2.0), "between -2 and 2"),
    "logit_bias": Rule("logit_bias"),
}


def check_value(name: str, value: Any) -> Any:
    """``value`` for field ``name``, normalised (an int temperature becomes a float, a
    ``stop`` string a 1-tuple), or :class:`InvalidParameterError`. A field without a
    rule is taken as is."""
    rule = RULES.get(name)
    if rule is None:
        return value
    if rule.kind == "stop":
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
            return tuple(value)
        raise InvalidParameterError(f"stop must be a string or a list of strings, not {_show(value)}", param=name)
    if rule.kind == "logit_bias":
        return _logit_bias(value)
    if rule.kind == "seed":
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise InvalidParameterError(f"seed must be an integer or None, not {_show(value)}", param=name)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if rule.kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
        if numeric and float(value).is_integer():
            value = int(value)
        else:
            raise InvalidParameterError(f"{name} must be an integer {rule.expects}, not {_show(value)}", param=name)
    elif rule.kind == "float":
        if not numeric or not math.isfinite(value):
            raise InvalidParameterError(f"{name} must be a number {rule.expects}, not {_show(value)}", param=name)
        value = float(value)
    if rule.check is not None and not rule.check(value):
        raise InvalidParameterError(f"{name} must be {rule.expects}, not {value!r}", param=name)
    return value


def _show(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{text} ({type(value).__name__})"


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; the defaults are the LFM2-VL model card's.

    Ranges (OpenAI's): ``temperature`` 0..2 (0 is greedy), ``top_p`` and ``min_p``
    0..1, ``top_k`` 0 (off) or more, ``repetition_penalty`` above 0 (1 is off),
    ``max_tokens`` at least 1. Anything else raises
    :class:`~lfm2_edge.errors.InvalidParameterError`.

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
        for f in fields(self):
            value = getattr(self, f.name)
            checked = check_value(f.name, value)
            if checked is not value:
                object.__setattr__(self, f.name, checked)

    def updated(self, **overrides: Any) -> Sampling:
        """A copy with the given fields replaced; ``None`` values keep the default.

        An unknown name, a value of the wrong type or out of range raises
        :class:`~lfm2_edge.errors.InvalidParameterError`.
        """
        names = [f.name for f in fields(self)]
        for key in overrides:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; the options are {', '.join(names)}"
                raise InvalidParameterError(f"unknown sampling option {key!r}{hint}", param=key)
        given = {k: check_value(k, v) for k, v in overrides.items() if v is not None}
        return replace(self, **given)

    def check_vocabulary(self, n_vocab: int) -> None:
        """Refuse a ``logit_bias`` that names a token the model's vocabulary lacks."""
        bad = [t for t, _ in self.logit_bias if t >= n_vocab]
        if bad:
            raise InvalidParameterError(
                f"logit_bias names token id {bad[0]}, outside this model's vocabulary (ids 0 to {n_vocab - 1})",
                param="logit_bias",
            )


def _logit_bias(value: Any) -> LogitBias:
    """``{token: bias}`` (keys may be digit strings, as JSON writes them) or pairs, checked
    and sorted by token."""
    pairs = value.items() if isinstance(value, Mapping) else value
    try:
        items = list(pairs)
    except TypeError:
        raise InvalidParameterError(
            f"logit_bias must map token ids to biases, not {value!r}", param="logit_bias"
        ) from None
    out: dict[int, float] = {}
    for item in items:
        try:
            key, bias = item
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"logit_bias must map token ids to biases, not {value!r}", param="logit_bias"
            ) from None
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, bool) or not isinstance(key, int) or key < 0:
            raise InvalidParameterError(
                f"logit_bias keys must be token ids (integers from 0), not {key!r}", param="logit_bias"
            )
        if (
            isinstance(bias, bool)
            or not isinstance(bias, (int, float))
            or not math.isfinite(bias)
            or not -100 <= bias <= 100
        ):
            raise InvalidParameterError(
                f"logit_bias values must be numbers from -100 to 100, not {bias!r} (token {key})",
                param="logit_bias",
            )
        out[key] = float(bias)
    return tuple(sorted(out.items()))
