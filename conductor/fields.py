"""How a job file's scalar fields are read: strings, booleans, whole numbers, durations.

The bottom of the validators: :mod:`conductor.spec` and the flow-control rules (flowspec,
taskcache, ratelimit) all read fields through these, and this imports none of them. Every function
raises :class:`~conductor.errors.InvalidSpec` naming the field and the reason.
"""
from __future__ import annotations

import math
import re
from typing import Any

from .errors import InvalidSpec

MAX_NAME = 200  # characters of a name, a key, a string field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _kind(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (dict, "map"), (list, "list"), (str, "string"), (int, "number"),
                       (float, "number"), (type(None), "null")):
        if isinstance(value, kind):  # numbers from a file are subclasses that keep their text
            return name
    return type(value).__name__


def _str(value: Any, field: str, *, empty: bool = False, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str):
        raise InvalidSpec(field, f"must be a string, not a {_kind(value)}")
    if not empty and not value.strip():
        raise InvalidSpec(field, "must not be empty")
    if len(value) > limit:
        raise InvalidSpec(field, f"is {len(value)} characters long, the limit is {limit}")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(field, f"must be true or false, not a {_kind(value)}")
    return value


def _int(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, float) and not isinstance(value, bool):
        raise InvalidSpec(field, f"must be a whole number, not {_short(value)}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(field, f"must be a whole number, not a {_kind(value)}")
    if minimum is not None and value < minimum:
        raise InvalidSpec(field, f"must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise InvalidSpec(field, f"must be at most {maximum}, not {value}")
    return value


def parse_duration(value: Any, field: str, maximum: float | None = None) -> float:
    """``30``, ``1.5``, ``"90s"``, ``"5m"``, ``"2h"`` -> seconds (> 0, finite, at most ``maximum``)."""
    if isinstance(value, bool):
        raise InvalidSpec(field, "must be a duration like 30, '90s', '5m' or '2h'")
    if isinstance(value, (int, float)):
        seconds = _finite(value, field)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = _finite(float(m.group(1)) * _DURATION_UNITS[m.group(2)], field)
    else:
        raise InvalidSpec(field, f"must be a duration like 30, '90s', '5m' or '2h', not {_short(value)}")
    if seconds <= 0:
        raise InvalidSpec(field, "must be more than zero")
    if maximum is not None and seconds > maximum:
        raise InvalidSpec(field, f"is too large: {_short(value)}, the limit is {maximum / 86400:g} days")
    return seconds


def _finite(value: float, field: str) -> float:
    """``value`` as a float, refusing NaN, infinities and ints too big for a float."""
    try:
        number = float(value)
    except OverflowError:
        raise InvalidSpec(field, "is too large") from None
    if math.isnan(number):
        raise InvalidSpec(field, "is not a number (NaN)")
    if math.isinf(number):
        raise InvalidSpec(field, "is too large (infinite)")
    return number


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar_text(value: Any) -> str:
    """How a scalar was written: numbers keep their source text, booleans are true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return getattr(value, "source", None) or str(value)
