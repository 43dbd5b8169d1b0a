"""What ``Client.wait`` follows: one job's value and, for a progress display, its counter keys
(conductor/counts.py: running and finished tasks by layer).

Each view is a :class:`conductor.follow.Follower` (its own etcd watch). The job's view alone says
when the job ends; the counter view exists only to count (``on_progress``). Separate watches are
separate streams, so when the job's view sees the commit that ended it (revision R), the counter
view may not have reached R yet: :meth:`JobWatch.behind` says so, and the waiter reads it once
(:func:`wait_for_end`), so that the last progress call counts every finished task.

Why no polling and no timer: every handler notifies the condition, a watch that fails notifies it
with the error, and the waiter sleeps on it until then (or until its own deadline).
"""
from __future__ import annotations

import time
import threading
from typing import Any, Callable

from . import codec, counts, states, views
from .errors import ConductorError, NotFound, WaitTimeout
from .follow import FollowHandler
from .ops import KV, Event

JOB, TALLY = 0, 1
Progress = Callable[[dict[str, Any], dict[str, int]], None]


class NeverSeen(NotFound):
    """The job's first listing had no such job (it was not there to be waited for at all)."""


class JobWatch:
    """The views ``wait`` follows, behind one condition: the job value (``job``), its counter keys
    (key -> value); each with the revision it is known to be at."""

    def __init__(self, count: int) -> None:
        self.cond = threading.Condition()
        self.job: dict[str, Any] | None = None
        self.job_revision = 0  # the mod revision of the job value seen
        self.counters: dict[str, bytes] = {}
        self.seen = False  # the job value was there at some point
        self._listed = [False] * count
        self.revisions = [0] * count  # each view is exact as of this revision
        self._resets: list[Callable[[list[KV]], None]] = [lambda kvs: None] * count
        self.error: BaseException | None = None

    def ready(self) -> bool:
        return all(self._listed)

    def ended(self) -> bool:
        return bool(self.job and self.job["state"] in (states.COMPLETED, states.ERRORED) and self.ready())

    def behind(self) -> list[int]:
        """The views (TALLY) not yet at the revision of the job value seen."""
        return [slot for slot in range(1, len(self.revisions)) if self.revisions[slot] < self.job_revision]

    def catch_up(self, slot: int, kvs: list[KV], revision: int) -> None:
        """Replace a view by a listing read at ``revision`` (call with ``cond`` held)."""
        if revision > self.revisions[slot]:
            self._resets[slot](kvs)
            self.revisions[slot] = revision

    def counts(self) -> dict[str, int]:
        by_state = counts.of_job(counts.total(self.counters.values()))
        running = by_state.pop(states.RUNNING)
        total = (self.job or {}).get("tasks", 0)
        done = sum(by_state.values())
        return {"total": total, "done": done, "running": running,
                "completed": by_state[states.COMPLETED], "errored": by_state[states.ERRORED],
                "skipped": by_state[states.SKIPPED]}

    def _handler(self, slot: int, reset: Callable[[list[KV]], None], apply: Callable[[Event], None]) -> FollowHandler:
        watch = self
        self._resets[slot] = reset

        class Handler(FollowHandler):
            def reset(self, kvs: list[KV], revision: int) -> None:
                with watch.cond:
                    reset(kvs)
                    watch._listed[slot] = True
                    watch.revisions[slot] = revision
                    watch.cond.notify_all()

            def events(self, events: list[Event], revision: int) -> None:
                with watch.cond:
                    for ev in events:
                        if ev.kv.mod_revision > watch.revisions[slot]:  # not already in a catch-up read
                            apply(ev)
                    watch.revisions[slot] = max(watch.revisions[slot], revision)
                    watch.cond.notify_all()

            def failed(self, exc: BaseException) -> None:
                with watch.cond:
                    watch.error = exc
                    watch.cond.notify_all()

        return Handler()

    def job_handler(self) -> FollowHandler:
        def reset(kvs: list[KV]) -> None:
            self.job = views.with_etag(codec.unpack(kvs[0].value), kvs[0]) if kvs else None
            self.job_revision = kvs[0].mod_revision if kvs else 0
            self.seen = self.seen or self.job is not None

        def apply(ev: Event) -> None:
            if ev.kind == "put":
                self.job = views.with_etag(codec.unpack(ev.kv.value), ev.kv)
                self.job_revision = ev.kv.mod_revision
            else:
                raise NotFound("the job was removed while waiting for it")

        return self._handler(JOB, reset, apply)

    def tally_handler(self) -> FollowHandler:
        def reset(kvs: list[KV]) -> None:
            self.counters = {kv.key: kv.value for kv in kvs}

        def apply(ev: Event) -> None:
            if ev.kind == "put":
                self.counters[ev.kv.key] = ev.kv.value
            else:
                self.counters.pop(ev.kv.key, None)

        return self._handler(TALLY, reset, apply)


def wait_for_end(watch: JobWatch, full: str, timeout: float | None, on_progress: Progress | None,
                 read: Callable[[int], tuple[list[KV], int]], deadline: float | None = None) -> dict[str, Any]:
    """Sleep on ``watch.cond`` until the job has ended (and, with ``on_progress``, every view is at
    the revision that ended it: ``read(slot)`` lists a view that is not). Returns the
    job. ``deadline`` (monotonic) replaces now + ``timeout`` when a wait began earlier. Raises
    WaitTimeout, NeverSeen (a NotFound: the first listing had no such job), NotFound (the job was
    removed), or the error a watch failed with."""
    if deadline is None and timeout is not None:
        deadline = time.monotonic() + timeout
    with watch.cond:
        while True:
            if watch.error is not None:
                raise watch.error if isinstance(watch.error, ConductorError) else \
                    ConductorError(f"following job {full} failed: {watch.error!r}")
            if watch.ready() and watch.job is None:
                raise (NotFound if watch.seen else NeverSeen)(f"no job {full} (it was removed)")
            if watch.ended():
                for slot in watch.behind():  # another stream, not there yet: one read, not a wait
                    watch.catch_up(slot, *read(slot))
            if watch.job and on_progress:
                on_progress(watch.job, watch.counts())
            if watch.ended():
                return watch.job  # type: ignore[return-value]
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"job {full} is still {watch.job['state'] if watch.job else 'unknown'} "
                                  f"after {timeout:g}s")
            watch.cond.wait(remaining)  # every change and every failure notifies
