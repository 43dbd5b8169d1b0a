"""Retries with backoff: how long a failed task waits before its next try, and which failures
are retried at all (``retry``, ``retry_on``, ``fail_on``; see ``docs/flow/retries.md``).

The rules are pure: no etcd, no clock reads (``now`` is passed in) and no hidden randomness: the jitter
of a delay is drawn from a hash of the task id and its failure count, so the same failure always
gets the same delay (a finish that is committed again decides the same).

A task waiting for its next try is QUEUED with ``not_before`` (epoch seconds) in its value, and
so in its ready marker: nodes do not claim it before then (:func:`due`), and each node wakes its
claim loop once at that time (:class:`DueTimers`, the one part here with a thread and a clock)
rather than polling.
"""
from __future__ import annotations

import hashlib
import heapq
import math
import threading
import logging
import time
from typing import Any, Callable, Hashable

from .threadname import name_this_thread

log = logging.getLogger("conductor.node")

JITTER_FLOOR = 0.5  # with jitter a delay is drawn from [delay * JITTER_FLOOR, delay]


def delay(policy: dict[str, Any] | None, failed: int, seed: str = "") -> float:
    """Seconds to wait after the ``failed``-th failure (1 for the first) under ``policy``:
    ``delay * backoff ** (failed - 1)`` capped at ``max_delay``, then with jitter a share of it
    between JITTER_FLOOR and 1 (so retries of many tasks failing together spread out). No policy:
    0 (retry at once, as before retries had a policy)."""
    if not policy:
        return 0.0
    base = float(policy.get("delay", 0.0))
    factor = float(policy.get("backoff", 1.0))
    cap = float(policy.get("max_delay", base))
    # exponent capped: 2 ** 1000 overflows a float long before max_delay matters
    seconds = min(cap, base * factor ** min(max(failed - 1, 0), 200))
    if policy.get("jitter"):
        seconds *= JITTER_FLOOR + (1 - JITTER_FLOOR) * _unit(f"{seed}/{failed}")
    return round(seconds, 3)


def _unit(seed: str) -> float:
    """A number in [0, 1) from ``seed``, the same every time."""
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") / 2.0**64


def not_retried(task: dict[str, Any], exit_code: int | None) -> str | None:
    """Why a failure with ``exit_code`` must not be retried (Kubernetes' podFailurePolicy by exit
    code), or None. ``fail_on`` lists codes that end the task at once; ``retry_on`` lists the only
    codes that are retried. Failures without an exit code (a timeout, a signal, cannot start) are
    not matched by either list and retry as usual."""
    if exit_code is None:
        return None
    if exit_code in (task.get("fail_on") or ()):
        return f"exit code {exit_code} is in fail_on: not retried"
    retry_on = task.get("retry_on")
    if retry_on and exit_code not in retry_on:
        return f"exit code {exit_code} is not in retry_on {list(retry_on)}: not retried"
    return None


def due(task: dict[str, Any], now: float) -> float | None:
    """When a queued task may be claimed, if that is still ahead of ``now``; else None."""
    at = task.get("not_before")
    return float(at) if at and float(at) > now else None


def clock_text(at: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


def waiting(task: dict[str, Any], now: float) -> str | None:
    """``show``'s reason for a task waiting out its retry delay, or None."""
    at = due(task, now)
    if at is None:
        return None
    return f"waiting: next try due at {clock_text(at)} (in {at - now:.0f}s, retry backoff)"


class DueTimers:
    """One timer thread that calls ``wake(key)`` at each registered time: a heap of (time, key)
    and one wait until the earliest, never a poll. Registering the same (time, key) twice wakes
    once. Used by the claim loop (a retry delay ends) and by :mod:`conductor.deadlines`.
    ``stop`` ends the thread; an exception from ``wake`` is logged and the thread goes on."""

    def __init__(self, wake: Callable[[Hashable], None], name: str = "due-timers"):
        self._wake = wake
        self._heap: list[tuple[float, int, Hashable]] = []
        self._known: set[tuple[float, Hashable]] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._order = 0  # ties are woken in the order they came (keys need not be comparable)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def at(self, when: float, key: Hashable = None) -> None:
        """Call ``wake(key)`` at epoch time ``when`` (rounded up to 10 ms, so a batch shares one)."""
        when = math.ceil(when * 100) / 100  # never early: the claim loop would find it not due yet
        with self._cond:
            if (when, key) in self._known or self._stopped:
                return
            self._known.add((when, key))
            self._order += 1
            heapq.heappush(self._heap, (when, self._order, key))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        name_this_thread()  # shown by top -H and ps -L
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    self._cond.wait(timeout=(self._heap[0][0] - time.time()) if self._heap else None)
                if self._stopped:
                    return
                when, _, key = heapq.heappop(self._heap)
                self._known.discard((when, key))
            try:
                self._wake(key)
            except Exception:  # noqa: BLE001 - one alarm's failure must not stop the others
                log.exception("timer %s at %s failed", key, clock_text(when))
