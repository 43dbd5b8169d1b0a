"""Deadlines: a task's ``start_within`` and a job's ``deadline`` (see ``docs/flow/deadlines.md``).

* ``start_within: 10m``: a task still QUEUED that long after it was first queued, never started,
  is ERRORED "not started within 10m" (never retried). A task that started once is past it.
* ``deadline: 2h`` (from posting) or an ISO time: when it passes, the job is flagged
  ``deadline_passed`` and killed through the ordinary kill path (:class:`Control`, as user
  "deadline"): what runs gets SIGTERM, what waits is ERRORED, and the job ends ERRORED with the
  reason "deadline passed".

Who does it, and how exactly: every node sees every ready marker in its stream, and the cache
hands each one with a deadline to :meth:`Deadlines.seen_ready`, which sets a timer (one thread,
:class:`backoff.DueTimers`) at that instant. When it fires the node writes the change with a
compare, so of all the nodes that fire, one writes and the rest find it done: exact to a second or
two (the timer, then one or two etcd round trips). The sweeper (:meth:`Deadlines.sweep`, every
``--sweep``) is the safety net for what no timer covers (a node started after every task of a job
was claimed; a kill cut short): it ends those within one sweep.

The rules (:func:`start_by`, :func:`deadline_at`) are pure; the rest reads and writes etcd.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Hashable, cast

from . import codec, ids, lifecycle, model, states
from .backoff import DueTimers
from .claims import decision_ops
from .control import Control, Target
from .errors import ConductorError
from .ops import Put, mod_is

if TYPE_CHECKING:
    from .parts import Node

log = logging.getLogger("conductor.node")

DEADLINE_BY = "deadline"  # the "user" a deadline kills as: tasks read "killed by deadline"
DEADLINE_REASON = "deadline passed"
GRACE = 10.0  # seconds between SIGTERM and SIGKILL for what a deadline stops


# ---- the rules ------------------------------------------------------------------------------------


def queued_at(task: dict[str, Any]) -> float | None:
    """When a task last became QUEUED from another state (its layer started, or a user retried
    it), or None. Records that keep the state (a pause, an env change) do not restart the count."""
    at, was = None, None
    for r in task.get("records", []):
        if r.get("state") == states.QUEUED and was != states.QUEUED:
            at = float(r["at"])
        was = r.get("state")
    return at


def start_by(task: dict[str, Any]) -> float | None:
    """The instant by which a QUEUED task that never ran must start (``start_within``, counted
    from when it was queued), or None."""
    within = task.get("start_within")
    if not within or task.get("state") != states.QUEUED or task.get("attempts"):
        return None
    first = queued_at(task)
    return None if first is None else first + float(within)


def deadline_at(value: dict[str, Any]) -> float | None:
    """A job's deadline as an instant, from a job or task value (``deadline``: ``{"at": t}`` or
    ``{"after": seconds}`` from the posting time in the job id), or None."""
    deadline = value.get("deadline")
    if not deadline:
        return None
    if "at" in deadline:
        return float(deadline["at"])
    job_id = value["id"] if value.get("kind") == "job" else value["job"]
    return ids.job_id_time(job_id) + float(deadline["after"])


def within_text(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def waiting(task: dict[str, Any], now: float) -> str | None:
    """``show``'s note on a queued task that must start soon, or None."""
    by = start_by(task)
    if by is None:
        return None
    left = by - now
    return f"must start within {left:.0f}s (start_within) or it is ERRORED" if left > 0 else None


# ---- the node side --------------------------------------------------------------------------------


class Deadlines:
    """A node's deadline timers and the writes they lead to. Thread-safe; ``seen_ready`` is
    called by the stream thread under the cache's lock, so it only sets timers."""

    def __init__(self, node: "Node"):
        self.node = node
        self._timers: DueTimers | None = None
        # task -> its start_by, for the ready tasks that have one: the sweep looks at these only
        # (the cache keeps ready values packed; unpacking every one to look would cost too much)
        self._start_by: dict[str, float] = {}

    def start(self) -> None:
        self._timers = DueTimers(self._fire, name=f"deadlines-{self.node.name}")

    def stop(self) -> None:
        if self._timers is not None:
            self._timers.stop()

    def seen_ready(self, task: dict[str, Any]) -> None:
        """A ready marker arrived: set a timer for its start_within and its job's deadline."""
        if self._timers is None or not ("start_within" in task or "deadline" in task):
            return
        by = start_by(task)
        if by is None:
            self._start_by.pop(task["id"], None)
        else:
            self._start_by[task["id"]] = by
            self._timers.at(by, ("start", task["id"], task["user"]))
        end = deadline_at(task)
        if end is not None:
            self._timers.at(end, ("job", task["job"], task["user"]))

    def _fire(self, key: Hashable) -> None:
        kind, some_id, user = cast("tuple[str, str, str]", key)
        try:
            if kind == "start":
                self.expire_start(some_id)
            else:
                self.pass_deadline(some_id, user)
        except ConductorError as exc:  # etcd away: the sweeper's pass ends it later
            log.warning("deadline of %s deferred to the sweep: %s", some_id, exc)

    # ---- start_within -----------------------------------------------------------------------------

    def expire_start(self, task_id: str, now: float | None = None) -> bool:
        """ERROR a task of the cache's ready queue that is past its ``start_within``; one compared
        transaction on the task as queued (a node that claimed it first wins). Returns
        whether this call ended it."""
        node = self.node
        with node.cache.cond:
            entry = node.cache.ready.get(task_id) if node.cache.is_synced else None
        now = time.time() if now is None else now
        if entry is None or (start_by(entry.task) or now + 1) > now:
            return False
        task = entry.task
        reason = f"not started within {within_text(float(task['start_within']))} (start_within)"
        decision = lifecycle.decide_expired(task, reason, model.now())
        if not decision.changed:
            return False
        k = node.keys
        compare = [mod_is(k.task(task["user"], task_id), entry.mod_revision)]
        if not node.claims.side.txn(compare, decision_ops(k, decision), decision).succeeded:
            return False
        log.warning("task %s %s ERRORED: %s", task_id, task["name"], reason)
        node.finisher.settle(task["job"], task["user"])
        return True

    # ---- a job's deadline -------------------------------------------------------------------------

    def pass_deadline(self, job_id: str, user: str, now: float | None = None, again: bool = False) -> bool:
        """Kill a job whose deadline passed: flag it ``deadline_passed`` (one compared write, so of
        the nodes whose timers fire one does it), then kill it through :class:`Control`. With
        ``again`` (the sweep) a job flagged before but still active is killed again: a kill cut
        short by a crash is finished (killing is idempotent). Returns whether it killed the job."""
        found = self.node.board.load(self.node.keys.job(user, job_id))
        if found is None:
            return False
        job, kv = found
        now = time.time() if now is None else now
        end = deadline_at(job)
        if job["state"] in states.FINAL or end is None or end > now:
            return False
        if job.get("deadline_passed") and not again:
            return False  # another node's timer flagged it and kills it
        if not job.get("deadline_passed"):
            job["deadline_passed"] = model.now()
            model.add_record(job, job["state"], f"{DEADLINE_REASON}: killing what still runs or waits")
            if not self.node.store.txn([mod_is(kv.key, kv.mod_revision)], [Put(kv.key, codec.pack(job))]).succeeded:
                return False  # another node (or a settle) wrote first: it is that node's, or the sweep's
            log.warning("job %s %s: %s; killing it", job_id, job["name"], DEADLINE_REASON)
        Control(self.node.board, DEADLINE_BY).stop(Target("job", job_id, user), "kill", grace=GRACE)
        return True

    def sweep(self) -> None:
        """The safety net (the sweeper's chore): every active job past its deadline, and every
        ready task of this node's cache past its start_within. Cost: one read per active job."""
        now = time.time()
        with self.node.cache.cond:
            for task_id in [t for t in self._start_by if t not in self.node.cache.ready]:
                del self._start_by[task_id]  # claimed, ended or removed meanwhile
            late = [task_id for task_id, by in self._start_by.items() if by <= now]
        for task_id in late:
            self.expire_start(task_id, now)
        for kv in self.node.store.iter_prefix(self.node.keys.active(), keys_only=True):
            user, job_id = self.node.keys.strip(kv.key).split("/")[1:3]  # the owner is in the path
            found = self.node.board.load(self.node.keys.job(user, job_id))
            if found and (deadline_at(found[0]) or now + 1) <= now:
                self.pass_deadline(job_id, user, now, again=True)
