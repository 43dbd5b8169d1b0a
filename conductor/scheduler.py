"""A conductor's scheduler thread: fire due schedule ticks (see :mod:`conductor.schedules`).

Every node runs one; the first node to create a tick's fire key fires it. Schedules are followed
by a watch, so a new or changed schedule is seen at once; between ticks the thread sleeps until
the next one (at most a second).

Firing goes by the node's own clock, but only while :mod:`conductor.clock` judges it within the
bound of the cluster's: a node whose clock ran ahead would fire (and so use up) ticks that are not
due, and catch-up would fire a whole backlog. A skewed node fires nothing; the others do.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from . import metrics, schedules
from .board import Board
from .clock import Clock
from .errors import StoreError
from .follow import FollowHandler
from .threadname import name_this_thread

log = logging.getLogger("conductor.node")

RETRY_BROKEN = 60  # seconds between tries of a schedule that failed for itself


class Scheduler:
    def __init__(self, board: Board, name: str, stopping: threading.Event, clock: Clock):
        self.board = board
        self.name = name
        self.stopping = stopping
        self.clock = clock  # judged by the node's ClockWatch: unjudged or skewed fires nothing
        self.cache = _Schedules(board)
        self.follower: Any = None
        self.broken: dict[str, tuple[dict[str, Any], float]] = {}  # name -> (value that failed, retry at)

    def start(self) -> None:
        self.follower = self.board.store.follow(self.board.keys.schedule(), self.cache, name="schedules")
        threading.Thread(target=self.run, name="scheduler", daemon=True).start()

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        self.cache.changed.set()

    def run(self) -> None:
        """Fire due schedule ticks; the first node to create a tick's fire key fires it."""
        name_this_thread()
        next_at: dict[str, float] = {}
        while not self.stopping.is_set():
            try:
                wait = self._fire_all(next_at) if self.clock.chore_time() is not None else 1.0
            except StoreError as exc:
                log.debug("scheduler: %s", exc)
                wait = 1.0
            except Exception:
                log.exception("scheduler: unexpected error")
                wait = 1.0
            self.cache.changed.wait(max(0.01, wait))
            self.cache.changed.clear()

    def _fire_all(self, next_at: dict[str, float]) -> float:
        """Fire every due tick (catching up on missed ones); returns seconds until the next."""
        now = self.clock.local()
        for name, schedule in list(self.cache.items.items()):
            if schedule.get("paused") or self._resting(name, schedule, now):
                continue
            if name not in next_at or next_at[name] <= now:
                at = self._fire_due(name, schedule, now)
                if at is not None:
                    next_at[name] = at
        for name in list(next_at):
            if name not in self.cache.items:
                del next_at[name]
        self.broken = {n: b for n, b in self.broken.items() if self.cache.items.get(n) is b[0]}
        return min([t - now for t in next_at.values()] + [1.0])

    def _fire_due(self, name: str, schedule: dict[str, Any], now: float) -> float | None:
        """Fire one schedule's due ticks; returns when to look at it again. A schedule that fails
        for itself (a rule that never fires, a value that is not a schedule) is logged once, as a
        warning without a traceback, and tried again every RETRY_BROKEN seconds, or at once when
        it changes (the cache gives a changed one a new value). Store errors go up to the loop."""
        try:
            due = schedules.due(self.board, schedule, now)
            schedules.record_missed(self.board, schedule, due.missed, self.name)  # before the fires: keys ascend
            for tick in due.fire:
                metrics.schedule_fired(self.name, schedules.fire(self.board, schedule, tick, self.name))
            at = schedules.next_fire(schedule, now)
        except StoreError:
            raise
        except Exception as exc:
            if self.broken.get(name, (None, 0.0))[0] is not schedule:
                log.warning("schedule %s fails, tried again every %d s until it changes (user %s): %s: %s",
                            schedule.get("name", name), RETRY_BROKEN, schedule.get("user"), type(exc).__name__, exc)
            self.broken[name] = (schedule, now + RETRY_BROKEN)
            return None
        self.broken.pop(name, None)
        return at

    def _resting(self, name: str, schedule: dict[str, Any], now: float) -> bool:
        """Is this schedule one that failed, unchanged since, and not yet due a retry?"""
        failed, retry_at = self.broken.get(name, (None, 0.0))
        return failed is schedule and now < retry_at


class _Schedules(FollowHandler):
    """The schedules of the cluster, followed by a watch; ``changed`` wakes the scheduler."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.items: dict[str, dict[str, Any]] = {}  # "<user>/<name>" -> the schedule, "user" from the key
        self.changed = threading.Event()
        self.on_failure: Any = None
        self._bad: set[str] = set()

    def _name(self, key: str) -> str:
        return self.board.keys.strip(key).split("/", 1)[1]

    def _value(self, kv: Any) -> dict[str, Any] | None:
        """A schedule as stored, its owner from the key; a value Conductor did not write is
        skipped, said once."""
        try:
            value = schedules.owned(self.board, kv)
            if isinstance(value.get("name"), str) and isinstance(value.get("cron"), str):
                return value
            raise ValueError("not a schedule")
        except Exception as exc:  # noqa: BLE001 - bad data, not our bug
            if kv.key not in self._bad:
                self._bad.add(kv.key)
                log.warning("ignoring %s: not a schedule Conductor wrote (%s)", kv.key, exc)
            return None

    def failed(self, exc: BaseException) -> None:
        if self.on_failure is not None:
            self.on_failure(exc)
        else:
            super().failed(exc)

    def reset(self, kvs: list[Any], revision: int) -> None:
        items = {}
        for kv in kvs:
            value = self._value(kv)
            if value is not None:
                items[self._name(kv.key)] = value
        self.items = items
        self.changed.set()

    def events(self, events: list[Any], revision: int) -> None:
        items = dict(self.items)
        for ev in events:
            name = self._name(ev.kv.key)
            if ev.kind == "put":
                value = self._value(ev.kv)
                if value is not None:
                    items[name] = value
            else:
                items.pop(name, None)
        self.items = items
        self.changed.set()
