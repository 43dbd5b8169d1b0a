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

from . import lifecycle, metrics, placement, templates
from .claims import Claimed, Ready
from .containers import ContainerRun
from .errors import ConductorError, StoreError
from .executor import Run, argv_of, task_env

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

    def run(self) -> None:
        seen = -1
        backoff = 0.05
        node = self.node
        while not node.stopping.is_set():
            batch, seen = self._pick(seen)
            if not batch:
                continue
            node.table.begin_claim(e.id for e in batch)
            try:
                try:
                    claimed, stale = node.claims.claim(batch, node.session.lease)
                    backoff = 0.05
                except StoreError as exc:  # if it committed after all, the sweep hands those claims back
                    log.debug("claim failed: %s", exc)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    seen = -1
                    continue
                if stale:
                    node.cache.drop(stale)
                    seen = -1
                for c in claimed:
                    self.start(c)
            finally:
                node.table.end_claim(e.id for e in batch)

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
        facts = self._facts()
        unfit = self._unfit

        def accept(entry: Ready) -> bool:
            task = entry.task
            if task.get("paused_at") or task["id"] in node.cache.paused:
                return False
            if unfit.get(entry.id) == entry.mod_revision:
                return False
            needs = task.get("needs") or {}
            if placement.fits(needs, facts, container=bool(task.get("image"))) is not None:
                if len(unfit) >= UNFIT_MEMO:
                    unfit.clear()
                unfit[entry.id] = entry.mod_revision
                return False
            slots = needs.get("slots", 1)
            if slots > free[0]:
                return False
            if needs.get("memory") and needs["memory"] > node.available_memory():
                return False
            free[0] -= slots
            return True

        return accept

    def _facts(self) -> dict[str, Any]:
        """This node as placement judges it: the facts its node key advertises (node._info)."""
        if self._facts_cache is None or self._facts_cache["name"] != self.node.name:
            node = self.node
            self._unfit.clear()
            self._facts_cache = {"name": node.name, "slots": node.settings.slots, "cpus": os.cpu_count(),
                                 "memory": psutil.virtual_memory().total, "labels": node.settings.labels,
                                 "containers": node.containers}
        return self._facts_cache

    def _group_paused(self, job: str, layer: str) -> bool:
        return job in self.node.cache.paused or layer in self.node.cache.paused

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

    def _secrets(self, c: Claimed, env: dict[str, str]) -> tuple[list[str] | None, dict[str, str], dict[str, str]]:
        """(argv, env, secrets) with the job's secret inputs filled in, only in this process.
        Raises ConductorError when they cannot be (the task then cannot start)."""
        task = c.task
        if not c.job.get("has_secrets"):
            return None, env, {}
        found = self.node.board.load(self.node.keys.secrets(task["user"], task["job"]))
        secrets = {k: v for k, v in (found[0] if found else {}).items() if k != "v"}
        argv, env = templates.fill_secrets(argv_of(task), env, secrets)
        return argv, env, secrets

    def start(self, c: Claimed) -> None:
        node = self.node
        task = c.task
        log.info("task %s %s RUNNING on %s (%s)", task["id"], task["name"], node.name, lifecycle.attempt_text(task))
        extra = {"CONDUCTOR_ETCD": node.store.describe(), "CONDUCTOR_NAMESPACE": node.keys.namespace,
                 "CONDUCTOR_USER": task["user"], "CONDUCTOR_NODE": node.name, **node.store.credentials.task_env()}
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
        request = node.cache.kills.get(c.id)
        if request:  # a user asked to stop it before this node had started it
            node.stop_requested(c.id, request)
