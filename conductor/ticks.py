"""When a cron rule ticks in a time zone: pure functions of the rule, the zone and the time.

A schedule's rule is read on the wall clock of its zone (``--tz``, an IANA name; UTC by default)
and each tick is turned into a UTC instant, the epoch seconds its fire key is named by. Daylight
saving time makes the wall clock skip and repeat an hour; each wall time fires at most once:

- **gap** (spring forward: in Europe/Paris 02:00-02:59 does not exist on the last Sunday of
  March): a tick that falls in the gap fires once, at the first instant after it (03:00 CEST).
  Several ticks in the gap (``*/20 2 * * *``) become that one instant, so fire once.
- **overlap** (fall back: 02:00-02:59 happens twice on the last Sunday of October): a rule with
  a fixed hour (``30 2 * * *``) fires at the first 02:30 only. A rule whose hour field starts with
  ``*`` (``*/20 * * * *``, ``* * * * * */10``) is an interval: it follows real time and ticks
  through both hours, so its runs stay evenly spaced (classic cron's rule for wildcard jobs).

Nothing here reads the clock: callers pass ``after``/``now`` (the scheduler passes its Clock's),
so tests can walk across a DST change without waiting for one.
"""
from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidSpec

UTC = "UTC"


def zone(name: str) -> tzinfo:
    """The zone named ``name``; raises InvalidSpec naming ``--tz`` when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidSpec("--tz", f"{name!r} is not a known time zone (an IANA name such as "
                                  "Europe/Paris or America/New_York, or UTC)") from None


def validate_tz(name: str | None) -> str:
    """A zone name that :func:`zone` accepts (empty or None means UTC); raises InvalidSpec."""
    name = (name or UTC).strip()
    zone(name)
    return name


def follows_real_time(cron: str) -> bool:
    """Does the rule tick through a repeated hour twice? Yes when its hour field is a wildcard."""
    fields = cron.split()
    return len(fields) >= 2 and fields[1].startswith("*")


def iter_ticks(cron: str, tz: str, after: float) -> Iterator[float]:
    """Tick instants (epoch seconds, increasing, each once) after ``after``, read in zone ``tz``.

    Raises croniter's errors (ValueError and kin) for a rule no date matches and InvalidSpec for
    an unknown zone."""
    where = zone(tz)
    from croniter import croniter  # here: the CLI renders ticks (local) on every show, cron only for schedules

    it = croniter(cron, datetime.fromtimestamp(after, where))
    twice = follows_real_time(cron)
    last = after
    while True:
        t = it.get_next(float)
        if t <= last:  # ticks in a DST gap all land on the instant after it: that one fires once
            continue
        if not twice and datetime.fromtimestamp(t, where).fold:  # the second pass of a repeated hour
            continue
        last = t
        yield t


def ticks(cron: str, tz: str, after: float, until: float, limit: int) -> list[float]:
    """Tick instants in (after, until], at most ``limit`` of them (the earliest)."""
    out: list[float] = []
    for t in iter_ticks(cron, tz, after):
        if t > until or len(out) >= limit:
            break
        out.append(t)
    return out


def next_tick(cron: str, tz: str, after: float) -> float:
    """The first tick instant after ``after``."""
    return next(iter_ticks(cron, tz, after))


def local(t: float, tz: str) -> str:
    """``t`` on the wall clock of zone ``tz``, with the zone's abbreviation (CET, CEST, UTC), which
    tells the two passes of a repeated hour apart."""
    return datetime.fromtimestamp(t, zone(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")
