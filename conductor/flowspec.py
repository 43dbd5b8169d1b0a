"""Validation of the flow-control fields of a job file: retry, retry_on, fail_on, start_within,
deadline, min_success (see ``docs/flow/``).

Part of :mod:`conductor.spec` (which calls these while it checks a job), kept apart so that spec
stays one sitting long. Pure: every function returns the normalised value or raises
:class:`InvalidSpec` naming the field and the reason; nothing is written anywhere.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from . import fields as spec  # the field readers (spec re-exports them)
from .errors import InvalidSpec
from .limits import MAX_TIMEOUT

RETRY_FIELDS = {"delay", "backoff", "max_delay", "jitter"}
DEFAULT_RETRY = {"delay": 5.0, "backoff": 2.0, "max_delay": 600.0, "jitter": False}
MAX_BACKOFF = 100.0  # a factor above this is a typo: delays would overflow the max_delay at once


def parse_retry(value: Any, field: str) -> dict[str, Any]:
    """``{delay: 5s, backoff: 2, max_delay: 10m, jitter: true}`` -> the same with seconds and the
    defaults filled in (``DEFAULT_RETRY``); a bare duration (``retry: 30s``) is a fixed delay."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        delay = spec.parse_duration(value, field, MAX_TIMEOUT)
        return {"delay": delay, "backoff": 1.0, "max_delay": delay, "jitter": False}
    if not isinstance(value, dict):
        raise InvalidSpec(field, "must be a map like {delay: 5s, backoff: 2, max_delay: 10m, jitter: true}")
    for key in value:
        if key not in RETRY_FIELDS:
            raise InvalidSpec(f"{field}.{key}", f"unknown field (known: {', '.join(sorted(RETRY_FIELDS))})")
    out = dict(DEFAULT_RETRY)
    if "delay" in value:
        out["delay"] = spec.parse_duration(value["delay"], f"{field}.delay", MAX_TIMEOUT)
    if "max_delay" in value:
        out["max_delay"] = spec.parse_duration(value["max_delay"], f"{field}.max_delay", MAX_TIMEOUT)
    elif out["delay"] > out["max_delay"]:
        out["max_delay"] = out["delay"]
    if "backoff" in value:
        out["backoff"] = _factor(value["backoff"], f"{field}.backoff")
    if "jitter" in value:
        out["jitter"] = spec._bool(value["jitter"], f"{field}.jitter")
    if out["max_delay"] < out["delay"]:
        raise InvalidSpec(f"{field}.max_delay", f"must be at least delay ({out['delay']:g}s), "
                                                f"not {out['max_delay']:g}s")
    return out


def _factor(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSpec(field, f"must be a number like 2 (each delay is the last one times this), "
                                 f"not a {spec._kind(value)}")
    number = spec._finite(value, field)
    if not 1 <= number <= MAX_BACKOFF:
        raise InvalidSpec(field, f"must be between 1 and {MAX_BACKOFF:g}, not {spec._scalar_text(value)}")
    return number


def parse_exit_codes(value: Any, field: str) -> list[int]:
    """A list of exit codes 1-255 (a single number is a list of one); sorted, each once."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not items:
        raise InvalidSpec(field, "must be a list of exit codes like [1, 75]")
    return sorted({spec._int(code, f"{field}[{i}]", minimum=1, maximum=255) for i, code in enumerate(items)})


def parse_common(data: dict[str, Any], where: str, inherited: dict[str, Any]) -> dict[str, Any]:
    """The inherited flow fields a job, layer or task sets (over ``inherited``), checked together:
    an exit code may not be both in ``retry_on`` and in ``fail_on``."""
    out: dict[str, Any] = {}
    if data.get("retry") is not None:
        out["retry"] = parse_retry(data["retry"], f"{where}retry")
    for name in ("retry_on", "fail_on"):
        if data.get(name) is not None:
            out[name] = parse_exit_codes(data[name], f"{where}{name}")
    if data.get("start_within") is not None:
        out["start_within"] = spec.parse_duration(data["start_within"], f"{where}start_within", MAX_TIMEOUT)
    both = set(out.get("retry_on", inherited.get("retry_on")) or ()) & set(
        out.get("fail_on", inherited.get("fail_on")) or ())
    if both:
        name = "fail_on" if "fail_on" in out else "retry_on"
        raise InvalidSpec(f"{where}{name}", f"exit code {min(both)} is in both retry_on and fail_on")
    return out


def parse_deadline(value: Any, field: str, now: float | None = None) -> dict[str, float]:
    """A job's deadline: a duration from posting (``2h``) -> ``{"after": seconds}``, or an ISO 8601
    time with its zone (``2026-12-01T06:00:00Z``) -> ``{"at": epoch seconds}`` (not in the past)."""
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as a datetime
        value = value.isoformat()
    if isinstance(value, str) and ("T" in value or value.count("-") >= 2):
        return {"at": _instant(value, field, now)}
    return {"after": spec.parse_duration(value, field, MAX_TIMEOUT)}


def _instant(text: str, field: str, now: float | None) -> float:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidSpec(field, f"must be a duration like '2h' or a time like '2026-12-01T06:00:00Z', "
                                 f"not {text!r}") from None
    if when.tzinfo is None:
        raise InvalidSpec(field, f"{text!r} has no time zone: add Z (UTC) or an offset like +01:00")
    at = when.timestamp()
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    if at <= current:
        raise InvalidSpec(field, f"{text!r} is in the past")
    return at


def parse_share(value: Any, field: str) -> float | None:
    """A layer's ``min_success``: a share of its tasks, more than 0 and at most 1 (None: unset)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSpec(field, f"must be a share of the layer's tasks like 0.95, not a {spec._kind(value)}")
    number = spec._finite(value, field)
    if not 0 < number <= 1:
        raise InvalidSpec(field, f"must be more than 0 and at most 1 (a share, like 0.95), "
                                 f"not {spec._scalar_text(value)}")
    return number
