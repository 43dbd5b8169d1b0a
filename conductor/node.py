"""The conductor daemon: threads that claim, run, finish and repair.

Threads (see docs/architecture.md):

* ``session``: the lease keepalive (:mod:`conductor.session`), never starved by the rest.
* ``stream``: list-then-watch of ``q/`` into the :class:`Cache`.
* ``claim``: picks ready tasks that fit the free slots and claims them in one transaction each batch.
* ``run-*``: one per running task, waiting for its child (:mod:`conductor.executor`).
* ``finish``: commits outcomes in batches, fenced by each claim, then settles drained layers.
* ``keeper``: recovers orphans, runs the periodic safety-net sweep, refreshes node facts.

Shutdown: the first SIGTERM stops claiming and hands running tasks back (killed, then requeued
with no attempt counted) or, with ``--drain``, lets them finish; a second SIGTERM stops at once.
"""
from __future__ import annotations

import logging
import os
import platform
import queue
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from . import __version__, spawn, states, templates
from .board import Board
from .cache import Cache
from .claims import Claimed, Claims, Outcome, Ready
from .clock import Clock
from .clockwatch import ClockWatch
from .containers import ContainerRun, default_docker_host, reachable
from .errors import ConductorError, NoSpace, StoreError
from .executor import Limits, Reaper, Run, argv_of, task_env
from .fence import Fence
from .keys import Keys
from .session import NameTaken, Session
from .settings import NodeSettings
from .keeper import Keeper
from .scheduler import Scheduler
from .store import Store
from .threadname import name_this_thread

log = logging.getLogger("conductor.node")

CLAIM_BATCH = 16  # most tasks claimed in one transaction (4 ops each, plus a read of each job and layer)
FINISH_BATCH = 32  # most outcomes taken at once; claims.finish splits them to fit etcd's limits
GATHER = 0.002  # seconds to wait for more outcomes (or freed slots) to share one transaction


class Conductor:
    def __init__(self, settings: NodeSettings, store: Store | None = None):
        self.settings = settings
        self.store = store or Store(settings.etcd, timeout=settings.etcd_timeout)
        self.keys = Keys(settings.namespace)
        self.board = Board(self.store, self.keys)
        self.name = settings.node_name()
        self.docker_host = settings.docker_host or default_docker_host()
        self.containers: str | None = None  # the Docker API version when container tasks can run here
        self.fence = Fence(self.docker_host)
        self.cache = Cache(self.keys, on_orphan=self._orphan_seen, on_kill=self._stop_requested)
        self.limits = Limits(settings.result_cap, settings.tail_cap, settings.grace)
        self.runs: dict[str, Run] = {}
        self.slots_used = 0
        self._lock = threading.Lock()
        self._freed = 0
        self._done: queue.Queue[tuple[Run, Outcome] | None] = queue.Queue()
        self._orphans: queue.Queue[tuple[str, int]] = queue.Queue()
        self._to_settle: set[tuple[str, str]] = set()
        self._inflight: set[str] = set()  # being claimed right now: not strays
        self._dirs: dict[str, Path] = {}  # job -> its directory of logs, known to exist
        self.reaper = Reaper()
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._follower: Any = None
        self._mem_cache = (0.0, 0)
        self._started = time.time()
        self.keeper = Keeper(self)
        self.clock = Clock(settings.clock_skew)  # judged against peers and etcd by the ClockWatch
        self.clock_watch = ClockWatch(self.store, self.keys, self.name, self.clock, self.stopping,
                                      on_change=lambda: self.session.refresh_info())
        self.scheduler = Scheduler(self.board, self.name, self.stopping, self.clock)
        self.session: Session
        self.claims: Claims

    # ---- start and stop ----------------------------------------------------------------------------

    def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.containers = reachable(self.docker_host)
        self.fence.start()
        self.clock_watch.start()  # judged before the node key is written and before any chore
        self._open_session()
        self.claims = Claims(self.store, self.keys, self.name)
        self.session.start()
        self._follower = self.store.follow(self.keys.stream(), self.cache, name="stream")
        self.scheduler.start()
        for target, name in ((self._claim_loop, "claim"), (self._finish_loop, "finish"),
                             (self.keeper.run, "keeper")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("node %s ready: %d slots, labels %s, etcd %s, namespace %s, containers %s", self.name,
                 self.settings.slots, self.settings.labels or "{}", self.store.describe(), self.keys.namespace,
                 f"via {self.docker_host} ({self.containers})" if self.containers else "none")

    def _open_session(self) -> None:
        base = self.name
        for n in range(1, 100):
            self.session = Session(self.store, self.keys, self.name, self.settings.ttl, self._info, self.fence,
                                   on_lost=self._session_lost)
            try:
                self.session.open()
                return
            except NameTaken:
                if self.settings.name:
                    raise
                self.name = f"{base}-{n + 1}"
        raise NameTaken(f"could not find a free node name starting with {base}")

    def run_forever(self) -> int:
        """Start, then serve until signalled. Returns the process exit status."""
        signals: list[int] = []
        woke = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:  # only sets flags
            signals.append(signum)
            woke.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        self.start()
        handled = 0
        while not self.stopped.is_set():
            woke.wait(0.5)
            woke.clear()
            if len(signals) > handled:
                handled = len(signals)
                if handled == 1:
                    log.info("node %s: %s received; %s", self.name, signal.Signals(signals[0]).name,
                             "draining running tasks" if self.settings.drain else "handing running tasks back")
                    threading.Thread(target=self.shutdown, args=(self.settings.drain,), daemon=True).start()
                else:
                    log.warning("node %s: second signal; stopping now", self.name)
                    self.stop_now()
                    return 1
        return 0

    def shutdown(self, drain: bool = False, timeout: float | None = None) -> None:
        """Stop claiming; hand running tasks back (or let them finish); leave the cluster."""
        self.stopping.set()
        with self.cache.cond:
            self.cache.cond.notify_all()
        if not drain:
            for run in list(self.runs.values()):
                run.kill("the node is shutting down", hand_back=True, grace=self.settings.shutdown_grace)
        deadline = None if timeout is None else time.monotonic() + timeout
        # a claim committing right now becomes a run in a moment: wait for those too
        while (self.runs or self._inflight) and (deadline is None or time.monotonic() < deadline) \
                and not self.stopped.is_set():
            time.sleep(0.05)
        self._done.put(None)
        for thread in self._threads:
            if thread.name == "finish":
                thread.join(timeout=10)
        self._close()

    def stop_now(self) -> None:
        self.stopping.set()
        self.fence.kill_all("the node was told to stop now")
        self._close()

    def _close(self) -> None:
        if self.stopped.is_set():
            return
        if self._follower:
            self._follower.stop()
        self.clock_watch.stop()
        self.scheduler.stop()
        self.session.close(revoke=True)
        self.fence.close()
        self.stopped.set()
        with self.cache.cond:
            self.cache.cond.notify_all()

    # ---- node facts --------------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        return {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "version": __version__,
                "labels": self.settings.labels, "slots": self.settings.slots, "cpus": os.cpu_count(),
                "memory": vm.total, "memory_available": vm.available, "load": os.getloadavg()[0],
                "platform": platform.platform(terse=True), "started": self._started,
                "containers": self.containers,
                "at": self.clock.local(), **self.clock.record()}

    def _available_memory(self) -> int:
        at, value = self._mem_cache
        if time.monotonic() - at > 1.0:
            value = psutil.virtual_memory().available
            self._mem_cache = (time.monotonic(), value)
        return value

    # ---- claiming ----------------------------------------------------------------------------------

    def _free(self) -> int:
        return self.settings.slots - self.slots_used

    def _claim_loop(self) -> None:
        name_this_thread()
        while not self.stopping.is_set():
            try:
                self._claim_until_stopped()
            except Exception:  # never let a bug stop this node from taking work
                log.exception("claim loop: unexpected error")
                time.sleep(1.0)

    def _claim_until_stopped(self) -> None:
        seen = -1
        backoff = 0.05
        while not self.stopping.is_set():
            cache = self.cache
            with cache.cond:
                cache.cond.wait_for(lambda: self.stopping.is_set() or (
                    cache.changes + self._freed != seen and self._free() > 0 and cache.is_synced
                    and len(cache.ready) > 0 and not self.session.lost), timeout=1.0)
                if self.stopping.is_set():
                    return
                if 0 < self._free() < min(self.settings.slots, CLAIM_BATCH) and len(cache.ready) > self._free():
                    # more work than free slots: let a few more slots free up, to claim them in one txn
                    cache.cond.wait_for(lambda: self._free() >= min(self.settings.slots, CLAIM_BATCH)
                                        or self.stopping.is_set(), timeout=GATHER)
                seen = cache.changes + self._freed
                if self._free() <= 0 or self.session.lost or not cache.is_synced:
                    continue
                batch = cache.ready.pick(min(self._free(), CLAIM_BATCH), self._acceptor(), self._group_paused)
            if not batch:
                continue
            with self._lock:
                self._inflight.update(e.id for e in batch)
            try:
                try:
                    claimed, stale = self.claims.claim(batch, self.session.lease)
                    backoff = 0.05
                except StoreError as exc:  # if it committed after all, the sweep hands those claims back
                    log.debug("claim failed: %s", exc)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    seen = -1
                    continue
                if stale:
                    self.cache.drop(stale)
                    seen = -1
                for c in claimed:
                    self._start(c)
            finally:
                with self._lock:
                    self._inflight.difference_update(e.id for e in batch)

    def _acceptor(self) -> Any:
        free = [self._free()]
        labels = self.settings.labels

        def accept(entry: Ready) -> bool:
            task = entry.task
            if task.get("paused_at") or task["id"] in self.cache.paused:
                return False
            if task.get("image") and not self.containers:
                return False
            needs = task.get("needs") or {}
            slots = needs.get("slots", 1)
            if slots > free[0] or slots > self.settings.slots:
                return False
            if any(labels.get(k) != v for k, v in (needs.get("labels") or {}).items()):
                return False
            if needs.get("memory") and needs["memory"] > self._available_memory():
                return False
            free[0] -= slots
            return True

        return accept

    def _group_paused(self, job: str, layer: str) -> bool:
        return job in self.cache.paused or layer in self.cache.paused

    def _start(self, c: Claimed) -> None:
        task = c.task
        log.info("task %s %s RUNNING on %s (attempt %d of %d)", task["id"], task["name"], self.name,
                 task["attempts"], task["max_attempts"])
        extra = {"CONDUCTOR_ETCD": self.store.describe(), "CONDUCTOR_NAMESPACE": self.keys.namespace,
                 "CONDUCTOR_USER": task["user"], "CONDUCTOR_NODE": self.name}
        job_dir = self._dirs.get(task["job"])
        if job_dir is None:
            job_dir = self.settings.data_dir / "tasks" / task["job"]
            job_dir.mkdir(parents=True, exist_ok=True)
            if len(self._dirs) > 10_000:
                self._dirs.clear()
            self._dirs[task["job"]] = job_dir
        env = task_env(c, extra)
        secrets: dict[str, str] = {}
        argv = None
        if c.job.get("has_secrets"):  # filled in only now, in this process; never stored in a task
            try:
                found = self.board.load(self.keys.secrets(task["user"], task["job"]))
                secrets = {k: v for k, v in (found[0] if found else {}).items() if k != "v"}
                argv, env = templates.fill_secrets(argv_of(task), env, secrets)
            except ConductorError as exc:  # the task cannot start; it must not hold its claim
                argv = ["/bin/sh", "-c", 'echo "$0" >&2; exit 2', f"cannot fill in secret inputs: {exc}"]
        args = (c, env, f"{job_dir}/{task['id']}.{task['attempts']}", task.get("cwd") or self.settings.cwd,
                self.fence, self.limits, self._run_done, self.reaper)
        run = ContainerRun(*args, docker_host=self.docker_host) if task.get("image") else Run(*args)
        run.argv, run.secrets = argv, secrets
        with self._lock:
            self.runs[c.id] = run
            self.slots_used += (task.get("needs") or {}).get("slots", 1)
        run.start()
        if self.stopping.is_set() and not self.settings.drain:  # claimed as the first SIGTERM came
            run.kill("the node is shutting down", hand_back=True, grace=self.settings.shutdown_grace)
        request = self.cache.kills.get(c.id)
        if request:  # a user asked to stop it before this node had started it
            self._stop_requested(c.id, request)

    def _stop_requested(self, task_id: str, request: dict[str, Any]) -> None:
        """A user asked to kill or skip a task: if it runs here, stop it (the finish says why)."""
        with self._lock:
            run = self.runs.get(task_id)
        if run is None:
            return
        action = "skip" if request.get("action") == "skip" else "kill"
        verb = "skipped" if action == "skip" else "killed"
        log.info("task %s: %s by %s; stopping it", task_id, verb, request.get("by", "?"))
        run.kill(f"{verb} by {request.get('by', '?')}", retry=False, grace=float(request.get("grace", 10.0)),
                 stop=action)

    def _run_done(self, run: Run, outcome: Outcome) -> None:
        with self._lock:
            self.slots_used -= (run.claimed.task.get("needs") or {}).get("slots", 1)
        with self.cache.cond:
            self._freed += 1
            self.cache.cond.notify_all()
        self._done.put((run, outcome))

    # ---- finishing ---------------------------------------------------------------------------------

    def _finish_loop(self) -> None:
        name_this_thread()
        while True:
            item = self._done.get()
            if item is None:
                return
            items = [item]
            gather_until = time.monotonic() + GATHER  # outcomes that come together commit together
            while len(items) < FINISH_BATCH:
                try:
                    more = self._done.get(timeout=max(0.0, gather_until - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    self._done.put(None)
                    break
                items.append(more)
            self._commit(items)

    def _commit(self, items: list[tuple[Run, Outcome]]) -> None:
        for run, outcome in items:
            request = self.cache.kills.get(run.id)
            if request and not outcome.stop and not outcome.hand_back:  # asked to stop: that wins
                outcome.stop = "skip" if request.get("action") == "skip" else "kill"
                verb = "skipped" if outcome.stop == "skip" else "killed"
                outcome.ok, outcome.retry = False, False
                outcome.reason = f"{verb} by {request.get('by', '?')}"
            if outcome.ok and not outcome.stop:
                self._prepare_spawn(run, outcome)
        backoff = 0.1
        while True:
            try:
                committed, lost = self.claims.finish([(run.claimed, outcome) for run, outcome in items])
                break
            except StoreError as exc:  # etcd away: keep the outcomes; the claims fence them anyway
                # a full etcd was said once (conductor.store.SpaceWatch), not at every retry
                (log.debug if isinstance(exc, NoSpace) else log.warning)("cannot commit %d outcome(s) yet: %s",
                                                                          len(items), exc)
            except Exception:
                log.exception("committing %d outcome(s) failed; retrying", len(items))
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
        by_id = {run.id: run for run, _ in items}
        for f in committed:
            task = f.task
            extra = f" (exit {task['exit_code']})" if task.get("exit_code") not in (None, 0) else ""
            log.info("task %s %s %s: %s%s", task["id"], task["name"], f.state,
                     task["records"][-1]["reason"], extra if f.state != states.QUEUED else "")
        for c in lost:
            log.warning("task %s: outcome dropped, this node no longer holds it", c.id)
        for run in by_id.values():
            run.cleanup()
            with self._lock:
                self.runs.pop(run.id, None)
        layers = {(f.task["job"], f.task["layer"], f.task["user"]) for f in committed if f.state in states.FINAL}
        if layers:
            synced = self.cache.wait_revision(max(f.revision for f in committed), timeout=2.0)
            for job, layer, user in layers:
                if not synced or not self.cache.layer_busy(layer):
                    self._settle(job, user)

    def _prepare_spawn(self, run: Run, outcome: Outcome) -> None:
        """Stage the tasks a finished task wrote to $CONDUCTOR_SPAWN into the next layer; their
        commit joins the task's own finish transaction (so they are added exactly once)."""
        try:
            with open(run.spawn_path, "rb") as f:
                data = f.read()
        except OSError:
            return
        if not data.strip():
            return
        try:
            stager = spawn.stage(self.board, run.claimed, data, self.name)
        except ConductorError as exc:
            outcome.ok, outcome.reason = False, f"spawn file: {exc}"
            return
        outcome.extra_ops, outcome.extra_compare = stager.commit_ops(self.name)
        outcome.recommit = lambda: stager.commit_ops(self.name)

    def _settle(self, job: str, user: str) -> None:
        try:
            self.board.settle(job, user, node=self.name)
        except StoreError as exc:
            log.warning("could not settle job %s now (%s); the keeper will retry", job, exc)
            with self._lock:
                self._to_settle.add((job, user))

    # ---- orphans, sweeps, facts ------------------------------------------------------------------

    def _orphan_seen(self, task_id: str, lease: int) -> None:
        self._orphans.put((task_id, lease))

    def _session_lost(self) -> None:
        for run in list(self.runs.values()):
            run.kill("self-fenced: the node lost its etcd session", grace=0)
