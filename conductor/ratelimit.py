"""Rate limits: at most ``limit`` starts per key in any window of length ``per``, cluster-wide.

A task (or its layer or job) says ``rate: {key: "api-{region}", limit: 100, per: 1m}``; ``{NAME}``
is filled as for concurrency keys (:mod:`conductor.concurrency`).

The window is kept exactly, as a sliding log (see docs/flow/rates.md):

* One key per rate key, ``rates/<key>``, holds the times of its latest starts (at most ``limit``
  of those within the window are needed; older ones are dropped).
* A claim computes the earliest instant the log allows (:func:`earliest`): not before the newest
  recorded start (so the log is in commit order), and not before the ``limit``-th most recent start
  plus ``per``. It appends its own start time (the claim's time, the task's ``started``) and
  writes the log back in the claim's transaction, compared on the log's mod revision. So starts of
  one key are serialised by etcd, each one checked against the exact log it extends.
* Then any ``limit`` + 1 consecutive starts are at least ``per`` apart: no half-open window of
  length ``per`` ever holds more than ``limit`` starts.

Everything here but :func:`read` and :func:`why_waiting` (which read etcd) is pure.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

from . import codec
from .errors import InvalidSpec
from .keys import Keys
from .ops import Compare, Op, Put, absent, mod_is
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

FIELDS = {"key", "limit", "per"}
MAX_LIMIT = 10_000  # the log is one value: 10,000 times stay far below etcd's value limit
MAX_PER = 86_400.0


def parse(value: Any, field: str) -> dict[str, Any]:
    """A ``rate`` map as written -> ``{key, limit, per}`` (per in seconds; the key may still hold
    placeholders). Raises InvalidSpec naming the field."""
    from . import concurrency
    from . import fields as spec

    key = concurrency.keyed_map(value, field, FIELDS, "{key: api-{region}, limit: 100, per: 1m}", "api-{region}")
    limit = value.get("limit")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidSpec(f"{field}.limit", f"must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}")
    if "per" not in value:
        raise InvalidSpec(f"{field}.per", "is required: the window, a duration like 1s, 2s or 1m")
    per = spec.parse_duration(value["per"], f"{field}.per", MAX_PER)
    if per < 0.01:
        raise InvalidSpec(f"{field}.per", "must be at least 10ms")
    concurrency.check_key(concurrency.fill_text(key, None, f"{field}.key"), f"{field}.key")
    return {"key": key, "limit": int(limit), "per": per}


# ---- the window (pure) -------------------------------------------------------------------------------

def earliest(starts: list[float], limit: int, per: float) -> float:
    """The earliest instant one more start may be recorded after ``starts`` (0: at once)."""
    if not starts:
        return 0.0
    ordered = sorted(starts)
    at = ordered[-1]  # never before the newest: the log stays in commit order
    if len(ordered) >= limit:
        at = max(at, ordered[-limit] + per)
    return at


def record(starts: list[float], at: float, keep: float) -> list[float]:
    """The log after a start at ``at``: starts older than ``keep`` seconds before it dropped."""
    return [t for t in starts if t > at - keep] + [at]


def allowed(starts: list[float], limit: int, per: float, at: float) -> bool:
    return at >= earliest(starts, limit, per)


def max_in_window(starts: list[float], per: float) -> int:
    """The most starts any half-open window [a, a + per) holds (what tests check)."""
    ordered = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - per:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def reason(key: str, limit: int, per: float, starts: list[float], now: float) -> str:
    """Why a task waits for its rate key, and when it may start."""
    when = earliest(starts, limit, per)
    recent = sum(1 for t in starts if t > now - per)
    at = time.strftime("%H:%M:%S", time.gmtime(when)) + f".{int(when * 1000) % 1000:03d} UTC"
    return (f"waiting for rate key {key} ({recent} starts in the last {per:g}s, limit {limit}); "
            f"may start at {at} (in {max(0.0, when - now):.1f}s)")


# ---- the claim's part --------------------------------------------------------------------------------

class Log:
    """A node's view of one rate key: its recorded starts and the mod revision they were read at
    (0: the key does not exist)."""

    def __init__(self, starts: list[float] | None = None, mod_revision: int = 0, keep: float = 0.0,
                 limit: int = 0):
        self.starts = list(starts or [])
        self.mod_revision = mod_revision
        self.keep = keep  # the longest window of the tasks that used the key: older starts are dropped
        self.limit = limit  # the limit of the latest start (for `conductor keys`)

    @classmethod
    def parse(cls, value: bytes, mod_revision: int) -> "Log":
        v = codec.unpack(value) if value else {}
        starts = [float(t) for t in v.get("starts", []) if isinstance(t, (int, float))]
        return cls(starts, mod_revision, float(v.get("keep", 0) or 0), int(v.get("limit", 0) or 0))

    def txn_parts(self, keys: Keys, key: str, added: list[float], keep: float,
                  limit: int = 0) -> tuple[list[Compare], list[Op]]:
        """The claim's compare (the log is as read) and put (the log with ``added`` appended)."""
        keep = max(keep, self.keep)
        starts = self.starts
        for at in added:
            starts = record(starts, at, keep)
        guard = mod_is(keys.rate(key), self.mod_revision) if self.mod_revision else absent(keys.rate(key))
        return [guard], [Put(keys.rate(key), codec.pack({"starts": starts, "keep": keep, "limit": limit}))]


def read(store: Store, keys: Keys, key: str | None = None) -> dict[str, Log]:
    """{rate key: its log}, read now (one key, or every key)."""
    if key:
        kv = store.get(keys.rate(key))
        return {key: Log.parse(kv.value, kv.mod_revision)} if kv else {}
    prefix = keys.rate()
    return {kv.key[len(prefix):]: Log.parse(kv.value, kv.mod_revision) for kv in store.iter_prefix(prefix)}


def why_waiting(store: Store, keys: Keys, task: Mapping[str, Any], now: float | None = None) -> str | None:
    """The reason a QUEUED task waits for its rate key, or None when it may start now."""
    rate = task.get("rate")
    if not rate:
        return None
    now = time.time() if now is None else now
    log = read(store, keys, rate["key"]).get(rate["key"]) or Log()
    if allowed(log.starts, rate["limit"], rate["per"], now):
        return None
    return reason(rate["key"], rate["limit"], rate["per"], log.starts, now)
