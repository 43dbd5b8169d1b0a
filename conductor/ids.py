"""Time-ordered ids, and the ids of layers and tasks derived from them.

A job id is 10 Crockford base32 characters of milliseconds since the epoch followed by 6 random
ones, so ids sort by posting time. A layer id is ``<job>.<n>`` and a task id ``<job>.<n>.<m>``:
any id names its job, and a range read over ``<job>.<n>.`` lists one layer's tasks.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from .errors import InvalidSpec

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_TIME_CHARS = 10
_RANDOM_CHARS = 6
JOB_ID_LEN = _TIME_CHARS + _RANDOM_CHARS


def _encode(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(_ALPHABET[number & 31])
        number >>= 5
    return "".join(reversed(chars))


def new_job_id(now: float | None = None) -> str:
    """A fresh job id that sorts after every id made earlier (to the millisecond)."""
    millis = int((time.time() if now is None else now) * 1000)
    return _encode(millis, _TIME_CHARS) + _encode(secrets.randbits(5 * _RANDOM_CHARS), _RANDOM_CHARS)


def job_id_time(job_id: str) -> float:
    """The posting time (seconds since the epoch) encoded in a job id."""
    millis = 0
    for ch in job_id[:_TIME_CHARS]:
        millis = millis * 32 + _ALPHABET.index(ch)
    return millis / 1000.0


def layer_id(job_id: str, index: int) -> str:
    return f"{job_id}.{index}"


def task_id(job_id: str, layer_index: int, number: int) -> str:
    return f"{job_id}.{layer_index}.{number}"


@dataclass(frozen=True)
class ParsedId:
    """What an id names: ``kind`` is ``job``, ``layer`` or ``task``."""

    kind: str
    job: str
    layer: int | None = None
    task: int | None = None

    @property
    def layer_id(self) -> str:
        assert self.layer is not None
        return layer_id(self.job, self.layer)


def parse_id(text: str) -> ParsedId:
    """Split an id into its parts; raise InvalidSpec naming the id when it is malformed."""
    parts = text.strip().split(".")
    job = parts[0]
    if not job or any(ch not in _ALPHABET for ch in job) or len(job) > JOB_ID_LEN:
        raise InvalidSpec("id", f"{text!r} is not a job, layer or task id")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        raise InvalidSpec("id", f"{text!r} is not a job, layer or task id") from None
    if len(numbers) > 2 or any(n < 0 for n in numbers):
        raise InvalidSpec("id", f"{text!r} is not a job, layer or task id")
    if not numbers:
        return ParsedId("job", job)
    if len(numbers) == 1:
        return ParsedId("layer", job, numbers[0])
    return ParsedId("task", job, numbers[0], numbers[1])


def id_sort_key(some_id: str) -> tuple:
    """Sort key that orders ``x.2`` before ``x.10``."""
    head, *rest = some_id.split(".")
    return (head, *[int(r) for r in rest])
