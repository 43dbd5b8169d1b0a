"""A conductor's keeper thread: the chores that keep the cluster repaired and tidy.

* Orphans reported by the cache (a RUNNING task whose lease ended) are requeued, once,
  whichever node gets there first (every waiting orphan at once; a node that loses the race sees
  the task requeued and moves on).
* Running tasks are sampled for memory and their log tails pushed to etcd about once a second,
  from their second second on.
* The sweep, every ``--sweep`` seconds: orphans a missed event left, claims this node holds but
  does not run (a claim whose reply was lost), settles that failed, and this node's old task logs.
  On the node holding the sweeper role also: messages left in the outbox, fires left unfinished,
  every active job settled again (repairing an interrupted queueing), and hourly retention.
"""
from __future__ import annotations

import logging
import os
import queue
import random
import shutil
import time
from typing import TYPE_CHECKING

from . import codec, lifecycle, loopguard, messages, partial, retention, schedules, states, taskcache, templates
from .claims import Claimed, Outcome
from .lifecycle import Cause
from .errors import StoreError
from .executor import Run
from .ops import Compare, Delete, Put, absent

if TYPE_CHECKING:
    from .parts import Node

log = logging.getLogger("conductor.node")


class Keeper:
    def __init__(self, node: "Node"):
        self.node = node
        self._gc_at = 0.0
        self._logs_at = 0.0
        self._memo_at = 0.0
        self._orphans: queue.Queue[tuple[str, str, int]] = queue.Queue()
        self._chore_errors: dict[str, str] = {}
        self._loops = loopguard.Warner()
        self._said_running: frozenset[str] = frozenset()  # the runs the node key last said

    def orphan(self, user: str, task_id: str, lease: int) -> None:
        """The stream saw a RUNNING task whose lease ended (called from the stream thread)."""
        self._orphans.put((user, task_id, lease))

    def _push_log(self, run: Run) -> None:
        """Keep a running task's log tail in etcd fresh (``conductor logs -f`` follows it)."""
        try:
            size = os.stat(run.log_path).st_size
        except OSError:
            return
        if size == run.pushed:
            return
        with open(run.log_path, "rb") as f:
            f.seek(max(0, size - self.node.limits.tail_cap))
            raw = f.read()
        tail = templates.mask(raw, run.secrets)
        pushed, size = size, size - (len(raw) - len(tail))
        node, task = self.node, run.claimed.task
        value = {"data": tail, "size": size, "truncated": size > node.limits.tail_cap, "attempt": task["attempts"],
                 "node": node.name, "path": run.log_path, "at": time.time(), "running": True}
        put = [Put(node.keys.log(task["user"], run.id), codec.pack(value))]
        try:  # fenced like a finish: a node that lost the claim writes nothing
            res = node.store.txn(node.claims.fence(run.claimed), put)
            if not res.succeeded and node.claims.refresh(run.claimed):  # a user changed the task meanwhile
                res = node.store.txn(node.claims.fence(run.claimed), put)
            if res.succeeded:
                run.pushed = pushed
        except StoreError:
            pass

    def run(self) -> None:
        sweep_at = time.monotonic() + self.node.settings.sweep * random.uniform(0.5, 1.0)
        facts_at = time.monotonic() + 10
        while not self.node.stopped.is_set():
            sweep_at, facts_at = self._keep(sweep_at, facts_at)

    def _recover_waiting(self) -> None:
        """Requeue the orphans the stream reported, all that are waiting at once."""
        try:
            waiting = [self._orphans.get(timeout=0.25)]
        except queue.Empty:
            return
        while True:
            try:
                waiting.append(self._orphans.get_nowait())
            except queue.Empty:
                break
        for user, task_id, lease in waiting:
            try:
                self._recover(user, task_id, lease)
            except StoreError as exc:
                log.debug("orphan recovery of %s deferred to the sweep: %s", task_id, exc)

    def _keep(self, sweep_at: float, facts_at: float) -> tuple[float, float]:
        self._recover_waiting()
        now = time.monotonic()
        for run in self.node.table.runs():
            if now >= run.push_at:  # a second after it started, then every second: short tasks cost nothing
                if run.push_at:
                    run.sample()
                    self._push_log(run)
                run.push_at = now + (1.0 if run.push_at else 0.75)
        if now >= sweep_at and not self.node.stopping.is_set():
            sweep_at = now + self.node.settings.sweep * random.uniform(0.8, 1.2)
            try:
                self.sweep()
            except StoreError as exc:
                log.debug("sweep deferred: %s", exc)
        running = frozenset(run.id for run in self.node.table.runs())
        if now >= facts_at or (running != self._said_running and now >= facts_at - 9):
            # host facts every 10 s; what it runs (node key: running, running_tasks) within a second
            facts_at = now + 10
            self._said_running = running
            self.node.session.refresh_info()
        return sweep_at, facts_at

    def _recover(self, user: str, task_id: str, lease: int) -> None:
        cache = self.node.cache
        with cache.cond:
            info = cache.runs.get(task_id)
            still = info is not None and info.lease == lease and lease not in cache.alive
        if not still and self.node.cache.is_synced:
            return
        state = self.node.claims.recover(user, task_id, lease)
        if state in states.FINAL:
            self.node.finisher.settle(task_id.split(".", 1)[0], user)

    def sweep(self) -> None:
        """The safety net: orphans this node's watch may have missed, and (on one node, the
        sweeper) every active job settled again. Cost: keys of running tasks, plus one read per
        active job on one node."""
        orphans = self.node.cache.orphans() if self.node.cache.is_synced else self.node.claims.orphans()
        for user, task_id, lease in orphans:
            self._recover(user, task_id, lease)
        self._release_strays()
        for job, user in self.node.table.take_settles():
            self.node.finisher.settle(job, user)
        self._clean_local_logs()
        self._loops.warn(self.node.board, self.node.name)  # every node says each loop guard stop
        if not self._lead("sweeper"):
            return
        # each chore on its own: one that fails must not keep the others from running
        for chore in (self._retention, self._deliver_messages, self._finish_fires, self._settle_active,
                      self._collect_partial_posts, self._expire_cache, self._deadlines):
            try:
                chore()
                self._chore_errors.pop(chore.__name__, None)
            except StoreError:
                raise
            except Exception as exc:  # one chore's bug must not keep the others from running
                if self._chore_errors.get(chore.__name__) != repr(exc):  # loudly, but once per error
                    log.exception("sweep: %s failed", chore.__name__)
                self._chore_errors[chore.__name__] = repr(exc)

    def _retention(self) -> None:
        if time.monotonic() >= self._gc_at:
            if retention.sweep(self.node.board, self.node.settings.keep, self.node.settings.gc_every,
                               self.node.clock):  # a skewed clock: try again at the next sweep
                self._gc_at = time.monotonic() + self.node.settings.gc_every

    def _expire_cache(self) -> None:
        """Remove cache entries whose TTL has passed (hourly: it reads every entry; taskcache.py)."""
        now = self.node.clock.chore_time()
        if time.monotonic() < self._memo_at or now is None:
            return  # a skewed clock would remove entries that still count
        self._memo_at = time.monotonic() + self.node.settings.gc_every
        taskcache.sweep(self.node.store, self.node.keys, now)

    def _collect_partial_posts(self) -> None:
        """Remove what posts killed half way left behind (after a grace period)."""
        if self.node.clock.chore_time() is None:
            return  # a grace period judged on a skewed clock could remove a post still being written
        for job in partial.collect(self.node.board, self.node.settings.partial_grace):
            log.warning("job %s: removed the keys of a post that never finished", job)

    def _deliver_messages(self) -> None:
        messages.deliver_all(self.node.board)  # messages whose sender died before delivering them

    def _finish_fires(self) -> None:
        for schedule, tick, fired in schedules.unfinished(self.node.board):
            schedules.complete(self.node.board, schedule, tick, fired)

    def _deadlines(self) -> None:
        """start_within and job deadlines no node's timer ended (deadlines.py)."""
        self.node.deadlines.sweep()

    def _settle_active(self) -> None:
        """Settle every active job again (a settle that failed, or whose node died before it)."""
        for kv in self.node.store.iter_prefix(self.node.keys.active(), keys_only=True):
            user, job = self.node.keys.strip(kv.key).split("/")[1:3]
            self.node.board.settle(job, user, node=self.node.name)

    def _release_strays(self) -> None:
        """Hand back claims on this node's lease that it is not running: a claim whose reply was
        lost (etcd failed over mid-request) looks failed to the claim loop but may have committed."""
        lease = self.node.session.lease
        with self.node.cache.cond:
            held = [(t, c) for t, c in self.node.cache.runs.items() if c.lease == lease]
        strays = [(t, c) for t, c in held if not self.node.table.holds(t)]
        for task_id, info in strays:
            user = info.user
            task = self.node.board.load(self.node.keys.task(user, task_id))
            if task is None or task[0]["state"] != states.RUNNING or task[0].get("node") != self.node.name:
                continue
            if self.node.table.holds(task_id):
                continue
            claimed = Claimed(task[0], task[1].mod_revision, info.create_revision, lease)
            outcome = lifecycle.with_kill_request(Outcome(Cause.HANDED_BACK, "the claim's reply was lost; never started"),
                                                  self.node.cache.kill_of(user, task_id))
            committed, _ = self.node.claims.finish([(claimed, outcome)])
            if committed:
                log.warning("task %s: handed back a claim this node held but never started", task_id)

    def _clean_local_logs(self) -> None:
        """Remove this node's task logs of jobs older than --keep (hourly)."""
        if time.monotonic() < self._logs_at or self.node.clock.chore_time() is None:
            return  # a skewed clock would remove the logs of jobs that just ended
        self._logs_at = time.monotonic() + self.node.settings.gc_every
        root = self.node.settings.data_dir / "tasks"
        cutoff = time.time() - self.node.settings.keep
        try:
            dirs = list(root.iterdir())
        except OSError:
            return
        for job_dir in dirs:
            try:
                if job_dir.stat().st_mtime < cutoff:
                    shutil.rmtree(job_dir, ignore_errors=True)
                    self.node.claimer.forget_dir(job_dir.name)
            except OSError:
                pass

    def _lead(self, role: str) -> bool:
        """Take (or keep) a cluster-wide role. A node whose clock is skewed gives it up, so that
        another node runs the chores (retention among them) instead of nobody."""
        key = self.node.keys.leader(role)
        lease = self.node.session.lease
        if self.node.clock.skewed:
            self.node.store.txn([Compare(key, "lease", "==", lease)], [Delete(key)])
            return False
        res = self.node.store.txn([absent(key)], [Put(key, codec.pack({"node": self.node.name, "at": time.time()}), lease)])
        if res.succeeded:
            return True
        kv = self.node.store.get(key)
        return kv is not None and kv.lease == lease

