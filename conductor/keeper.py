"""A conductor's keeper thread: the chores that keep the cluster repaired and tidy.

* Orphans reported by the cache (a run marker left without its claim) are requeued, once,
  whichever node gets there first (after a short random delay, so nodes do not stampede).
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

from . import codec, messages, retention, schedules, states, templates
from .claims import Claimed, Outcome
from .errors import StoreError
from .executor import Run
from .ops import Put, absent, created_at
from .threadname import name_this_thread

if TYPE_CHECKING:
    from .node import Conductor

log = logging.getLogger("conductor.node")


class Keeper:
    def __init__(self, node: "Conductor"):
        self.node = node
        self._gc_at = 0.0
        self._logs_at = 0.0

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
        try:  # fenced like a finish: a node that lost the claim writes nothing
            node.store.txn([created_at(node.keys.claim(run.id), run.claimed.claim_rev)],
                           [Put(node.keys.log(task["user"], run.id), codec.pack(value))])
            run.pushed = pushed
        except StoreError:
            pass

    def run(self) -> None:
        name_this_thread()
        sweep_at = time.monotonic() + self.node.settings.sweep * random.uniform(0.5, 1.0)
        facts_at = time.monotonic() + 10
        while not self.node.stopped.is_set():
            try:
                sweep_at, facts_at = self._keep(sweep_at, facts_at)
            except Exception:  # the keeper must outlive any bug in what it calls
                log.exception("keeper: unexpected error")
                time.sleep(1.0)

    def _keep(self, sweep_at: float, facts_at: float) -> tuple[float, float]:
        try:
            task_id, lease = self.node._orphans.get(timeout=0.25)
            time.sleep(random.uniform(0, 0.05))  # let one node win without a stampede
            self._recover(task_id, lease)
        except queue.Empty:
            pass
        except StoreError as exc:
            log.debug("orphan recovery deferred: %s", exc)
        now = time.monotonic()
        for run in list(self.node.runs.values()):
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
        if now >= facts_at:
            facts_at = now + 10
            self.node.session.refresh_info()
        return sweep_at, facts_at

    def _recover(self, task_id: str, lease: int) -> None:
        with self.node.cache.cond:
            still = self.node.cache.runs.get(task_id) == lease and (
                task_id not in self.node.cache.claims or self.node.cache.claims[task_id].lease != lease)
        if not still and self.node.cache.is_synced:
            return
        state = self.node.claims.recover(task_id, lease)
        if state in states.FINAL:
            job = task_id.split(".", 1)[0]
            self.node._settle(job, self.node.board.owner(job))

    def sweep(self) -> None:
        """The safety net: orphans this node's watch may have missed, and (on one node, the
        sweeper) every active job settled again. Cost: keys of running tasks, plus one read per
        active job on one node."""
        orphans = self.node.cache.orphans() if self.node.cache.is_synced else self.node.claims.orphans()
        for task_id, lease in orphans:
            self._recover(task_id, lease)
        self._release_strays()
        with self.node._lock:
            pending, self.node._to_settle = self.node._to_settle, set()
        for job, user in pending:
            self.node._settle(job, user)
        self._clean_local_logs()
        if not self._lead("sweeper"):
            return
        # each chore on its own: one that fails must not keep the others from running
        for chore in (self._retention, self._deliver_messages, self._finish_fires, self._settle_active):
            try:
                chore()
            except StoreError:
                raise
            except Exception:
                log.exception("sweep: %s failed", chore.__name__)

    def _retention(self) -> None:
        if time.monotonic() >= self._gc_at:
            if retention.sweep(self.node.board, self.node.settings.keep, self.node.settings.gc_every,
                               self.node.clock):  # a skewed clock: try again at the next sweep
                self._gc_at = time.monotonic() + self.node.settings.gc_every

    def _deliver_messages(self) -> None:
        messages.deliver(self.node.board)  # messages whose sender died before delivering them

    def _finish_fires(self) -> None:
        for schedule, tick, fired in schedules.unfinished(self.node.board):
            schedules.complete(self.node.board, schedule, tick, fired)

    def _settle_active(self) -> None:
        """Settle every active job again, finishing any queueing that was cut short."""
        for kv in self.node.store.iter_prefix(self.node.keys.active()):
            job = kv.key.rsplit("/", 1)[1]
            self.node.board.settle(job, codec.unpack(kv.value).get("user"), node=self.node.name, repair=True)

    def _release_strays(self) -> None:
        """Hand back claims on this node's lease that it is not running: a claim whose reply was
        lost (etcd failed over mid-request) looks failed to the claim loop but may have committed."""
        lease = self.node.session.lease
        with self.node.cache.cond:
            held = [(t, c) for t, c in self.node.cache.claims.items() if c.lease == lease]
        with self.node._lock:
            strays = [(t, c) for t, c in held if t not in self.node.runs and t not in self.node._inflight]
        for task_id, info in strays:
            found = self.node.board.load(self.node.keys.run(task_id))
            if found is None:
                continue
            user = found[0].get("user", "")
            task = self.node.board.load(self.node.keys.task(user, task_id))
            if task is None or task[0]["state"] != states.RUNNING or task[0].get("node") != self.node.name:
                continue
            with self.node._lock:
                if task_id in self.node.runs or task_id in self.node._inflight:
                    continue
            claimed = Claimed(task[0], task[1].mod_revision, info.create_revision, lease)
            outcome = Outcome(False, "the claim's reply was lost; never started", hand_back=True)
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
                    self.node._dirs.pop(job_dir.name, None)
            except OSError:
                pass

    def _lead(self, role: str) -> bool:
        key = self.node.keys.leader(role)
        lease = self.node.session.lease
        res = self.node.store.txn([absent(key)], [Put(key, codec.pack({"node": self.node.name, "at": time.time()}), lease)])
        if res.succeeded:
            return True
        kv = self.node.store.get(key)
        return kv is not None and kv.lease == lease

