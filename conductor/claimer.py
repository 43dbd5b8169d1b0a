"""A node's claim loop: pick ready tasks that fit, claim them in one transaction, start them.

Woken by the stream cache (new ready tasks) and by freed slots; never polls. While the cache is not
live (the watch broke) or the session is lost, nothing is claimed. Starting a task means building its
environment (secret inputs filled in only here, never stored) and asking the supervisor process to
spawn it: the process exists only under the supervisor's fence.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import psutil

from . import compensation, lifecycle, metrics, placement, seal, taskcache, templates
from .backoff import DueTimers, due
from .claims import Claimed, Ready
from .containers import ContainerRun
from .errors import ConductorError, StoreError
from .executor import Run, argv_of, task_env
from .lifecycle import Cause, Outcome

if TYPE_CHECKING:
    from .parts import Node

log = logging.getLogger("conductor.node")

CLAIM_BATCH = 16  # most tasks claimed in one transaction (4 ops each, plus a read of each job and layer)
UNFIT_MEMO = 200_000  # most tasks remembered as never fitting this node (then the memo starts again)
GATHER = 0.002  # seconds to wait for more slots to free up, to claim them in one transaction


class Claimer:
    def __init__(self, node: "Node"):
        self.node = node
        self._dirs: dict[str, Path] = {}  # job -> its directory of logs, known to exist
        self._facts_cache: dict[str, Any] | None = None
        # ready tasks this node can never hold (by the revision of their ready marker): a pick
        # reads past them in a dict lookup, however many wait for a node that has what they need
        self._unfit: dict[str, int] = {}
        self._due: DueTimers | None = None  # wakes this loop when a retry delay ends

    def _wake(self, _key: object = None) -> None:
        """A retry delay ended: pick again (the task's ready marker did not change)."""
        with self.node.cache.cond:
            self.node.cache.changes += 1
            self.node.cache.cond.notify_all()

    def run(self) -> None:
        seen = -1
        backoff = 0.05
        node = self.node
        self._due = DueTimers(self._wake, name=f"due-{node.name}")
        while not node.stopping.is_set():
            batch, seen = self._pick(seen)
            if not batch:
                continue
            node.table.begin_claim(e.id for e in batch)
            try:
                try:
                    claimed, stale = node.claims.claim(batch, node.session.lease, node.gate)
                    backoff = 0.05
                except StoreError as exc:  # if it committed after all, the sweep hands those claims back
                    log.debug("claim failed: %s", exc)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    seen = -1
                    continue
                if stale:  # only the revisions this claim compared: a newer one is live
                    node.cache.drop({e.id: e.mod_revision for e in batch if e.id in stale})
                    seen = -1
                if claimed:  # flow control hook: count the slots and starts just taken (conductor/gate.py)
                    node.gate.committed(claimed[0].claim_rev)
                for c in claimed:
                    self.start(c)
            finally:
                node.table.end_claim(e.id for e in batch)
        self._due.stop()

    def _pick(self, seen: int) -> tuple[list[Ready], int]:
        """Wait for something claimable, then pick a batch that fits the free slots."""
        node, cache, table = self.node, self.node.cache, self.node.table
        want = min(node.settings.slots, CLAIM_BATCH)
        with cache.cond:
            cache.cond.wait_for(lambda: node.stopping.is_set() or (
                cache.changes + table.freed != seen and table.free() > 0 and cache.is_synced
                and len(cache.ready) > 0 and not node.session.lost), timeout=1.0)
            if node.stopping.is_set():
                return [], seen
            if 0 < table.free() < want and len(cache.ready) > table.free():
                # more work than free slots: let a few more slots free up, to claim them in one txn
                cache.cond.wait_for(lambda: table.free() >= want or node.stopping.is_set(), timeout=GATHER)
            seen = cache.changes + table.freed
            free = table.free()
            if free <= 0 or node.session.lost or not cache.is_synced:
                return [], seen
            return cache.ready.pick(min(free, CLAIM_BATCH), self._acceptor(free), self._group_paused), seen

    def _acceptor(self, free_slots: int) -> Callable[[Ready], bool]:
        """Accepts a task when this node could hold it at all (:func:`placement.fits`) and it fits
        what is free now: the slots not yet taken by this batch, the memory available (checked,
        not reserved: each task of a batch is checked against the same available memory)."""
        node = self.node
        free = [free_slots]
        long_ok = self._long_rule()
        facts = self._facts()
        unfit = self._unfit
        now = time.time()
        gate = node.gate
        gate.begin()

        def accept(entry: Ready) -> bool:
            task = entry.task
            if task.get("paused_at") or node.cache.is_paused(task["user"], task["id"]):
                return False
            not_before = due(task, now)
            if not_before is not None:  # waiting out a retry delay (backoff.py): wake up when it ends
                if self._due is not None:
                    self._due.at(not_before)
                return False
            if unfit.get(entry.id) == entry.mod_revision:
                return False
            if not entry.mod_revision and node.cache.suspect(entry.id):  # keyless, found taken: wait for the event
                return False
            needs = task.get("needs") or {}
            if placement.fits(needs, facts, container=bool(task.get("image"))) is not None:
                if len(unfit) >= UNFIT_MEMO:
                    unfit.clear()
                unfit[entry.id] = entry.mod_revision
                return False
            slots = needs.get("slots", 1)
            if slots > free[0] or not long_ok(task, slots):
                return False
            if needs.get("memory") and needs["memory"] > node.available_memory():
                return False
            if not gate.admit(task):  # flow control hook: concurrency keys, rate limits (conductor/gate.py)
                return False
            free[0] -= slots
            return True

        return accept

    def _long_rule(self) -> Callable[[dict, int], bool]:
        """Accepts a task of a short layer; one of any other layer only within the long slots free
        (runtable.py: short tasks are not throttled by the CPU count, long ones are). A task that
        needs more slots than there are long slots may take the node when no long task runs."""
        table = self.node.table
        if table.long_slots >= table.slots:
            return lambda task, slots: True
        left = [table.long_free()]
        alone = [table.long_idle()]  # no long task runs, none taken in this batch yet

        def ok(task: dict, slots: int) -> bool:
            if table.is_short(task["layer"]):
                return True
            if slots > left[0] and not alone[0]:
                return False
            left[0] -= slots
            alone[0] = False
            return True

        return ok

    def _group_paused(self, user: str, job: str, layer: str) -> bool:
        return self.node.cache.is_paused(user, job) or self.node.cache.is_paused(user, layer)

    def _facts(self) -> dict[str, Any]:
        """This node as placement judges it: the facts its node key advertises (node._info)."""
        if self._facts_cache is None or self._facts_cache["name"] != self.node.name:
            node = self.node
            self._unfit.clear()
            self._facts_cache = {"name": node.name, "slots": node.settings.slots, "cpus": os.cpu_count(),
                                 "memory": psutil.virtual_memory().total, "labels": node.settings.labels,
                                 "containers": node.containers}
        return self._facts_cache

    # ---- starting ----------------------------------------------------------------------------------

    def _job_dir(self, job: str) -> Path:
        job_dir = self._dirs.get(job)
        if job_dir is None:
            job_dir = self.node.settings.data_dir / "tasks" / job
            job_dir.mkdir(parents=True, exist_ok=True)
            if len(self._dirs) > 10_000:
                self._dirs.clear()
            self._dirs[job] = job_dir
        return job_dir

    def forget_dir(self, job: str) -> None:
        self._dirs.pop(job, None)

    def _from_cache(self, c: Claimed) -> bool:
        """Complete a claimed task from a cached run's result instead of running it (taskcache.py):
        its log says so, its result is the cached bytes, and its finish is the ordinary fenced one.
        False (the task runs) when there is no hit, or etcd cannot tell now: the cache only saves work."""
        node, task = self.node, c.task
        try:
            hit = taskcache.lookup(node.store, node.keys, task, c.job, c.layer, time.time())
        except StoreError as exc:
            log.warning("task %s: cache not readable (%s); running it", task["id"], exc)
            return False
        if hit is None:
            return False
        log.info("task %s %s cache hit on %s: %s", task["id"], task["name"], node.name, hit.reason)
        scratch = f"{self._job_dir(task['job'])}/{task['id']}.{task['attempts']}"
        run = Run(c, {}, scratch, None, node.supervision, node.limits, node.finisher.run_done)
        with open(run.log_path, "w") as f:
            f.write(f"conductor: not run: {hit.reason}\n")
        if hit.result is not None:
            with open(run.result_path, "wb") as f:
                f.write(hit.result)
        node.table.add(run)
        at = round(time.time(), 3)
        run.finish_unstarted(Outcome(Cause.EXIT, hit.reason, 0, at, at, {"cpu": 0.0, "max_rss": None, "wall": 0.0},
                                     cached=hit.task))
        return True

    def _failure_env(self, c: Claimed) -> dict[str, str]:
        """CONDUCTOR_FAILED_* for a compensation task (one read of the job's errored tallies)."""
        try:
            failed = compensation.find_failed(self.node.store, self.node.keys, c.job)
        except StoreError as exc:
            log.warning("task %s: cannot read which task failed (%s)", c.id, exc)
            failed = None
        return compensation.failure_env(c.layer, failed, c.job)

    def _secrets(self, c: Claimed, env: dict[str, str]) -> tuple[list[str] | None, dict[str, str], dict[str, str]]:
        """(argv, env, secrets) with the job's secret inputs filled in, only in this process.
        Raises ConductorError when they cannot be (the task then cannot start)."""
        task = c.task
        if not c.job.get("has_secrets"):
            return None, env, {}
        found = self.node.board.load(self.node.keys.secrets(task["user"], task["job"]))
        secrets = seal.open_inputs(self.node.store, self.node.keys, found[0], task["user"], task["job"]) if found else {}
        argv, env = templates.fill_secrets(argv_of(task), env, secrets)
        return argv, env, secrets

    def start(self, c: Claimed) -> None:
        node = self.node
        task = c.task
        if task.get("cache") and self._from_cache(c):  # taskcache.py: a hit never starts the command
            return
        log.info("task %s %s RUNNING on %s (%s)", task["id"], task["name"], node.name, lifecycle.attempt_text(task))
        extra = {"CONDUCTOR_ETCD": node.store.describe(), "CONDUCTOR_NAMESPACE": node.keys.namespace,
                 "CONDUCTOR_USER": task["user"], "CONDUCTOR_NODE": node.name, **node.store.credentials.task_env()}
        if c.layer.get("compensation"):  # compensation.py: which task failed, and why
            extra.update(self._failure_env(c))
        env = task_env(c, extra)
        try:
            argv, env, secrets = self._secrets(c, env)
            failed = None
        except ConductorError as exc:  # the task cannot start; it must not hold its claim
            argv, secrets, failed = None, {}, f"start_failed:cannot fill in secret inputs: {exc}"
        scratch = f"{self._job_dir(task['job'])}/{task['id']}.{task['attempts']}"
        args: tuple[Any, ...] = (c, env, scratch, task.get("cwd") or node.settings.cwd, node.supervision,
                                 node.limits, node.finisher.run_done)
        run = ContainerRun(*args, docker_host=node.docker_host) if task.get("image") else Run(*args)
        run.argv, run.secrets = argv, secrets
        node.table.add(run)
        if failed:
            run.started = round(time.time(), 3)
            run.on_exited(None, 0.0, time.time(), failed)
            return
        run.start()
        metrics.task_started(node.name, task.get("started"), c.job.get("created"), time.time())
        if node.stopping.is_set() and not node.settings.drain:  # claimed as the first SIGTERM came
            run.kill("the node is shutting down", hand_back=True, grace=node.settings.shutdown_grace)
        request = node.cache.kill_of(task["user"], c.id)
        if request:  # a user asked to stop it before this node had started it
            node.stop_requested(task["user"], c.id, request)
