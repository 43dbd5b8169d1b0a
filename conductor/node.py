"""The conductor daemon: one node of the cluster. This module starts, stops and wires the parts.

Threads, each owned by the node's :class:`Crew` (see docs/architecture.md):

* ``claim`` (:mod:`conductor.claimer`): picks ready tasks that fit the free slots, claims them in one
  transaction per batch and asks the supervisor to start them.
* ``finish`` (:mod:`conductor.finisher`): commits outcomes in batches, fenced by each claim, then
  settles drained layers.
* ``keeper`` (:mod:`conductor.keeper`): recovers orphans, pushes log tails, runs the safety-net sweep.
* ``session``: grants a new lease when the old one expired.
* ``stream`` and ``schedules``: list-then-watch followers (:mod:`conductor.follow`); ``scheduler``.
* ``supervision`` and ``heartbeat``: the link to the supervisor process (:mod:`conductor.supervisor`),
  which starts, waits for and fences every task and keeps the lease alive.

A thread that dies of a bug stops the node loudly (exit status 70) after its tasks were killed and
its lease revoked, so other nodes take its work over at once. Shutdown: the first SIGTERM stops
claiming and hands running tasks back (or, with ``--drain``, lets them finish); a second stops at once.
"""
from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import threading
import time
from typing import Any

import psutil

from . import __version__, counts, metrics
from .board import Board
from .cache import Cache
from .claimer import Claimer
from .claims import Claims
from .clock import Clock
from .clockwatch import ClockWatch
from .containers import default_docker_host, reachable
from .crew import Crew
from .deadlines import Deadlines
from .executor import Limits
from .exitcodes import Exit
from .finisher import Finisher
from .gate import Gate
from .keeper import Keeper
from .keys import Keys, lease_hex
from .runtable import RunTable
from .scheduler import Scheduler
from .session import NameTaken, Session
from .views import RUNNING_SHOWN
from .settings import NodeSettings
from .store import Store, TLSFiles
from .supervision import Supervision
from .web.child import WebChild

log = logging.getLogger("conductor.node")


class Conductor:
    def __init__(self, settings: NodeSettings, store: Store | None = None):
        self.settings = settings
        settings.data_dir = settings.data_dir.resolve()
        credentials = TLSFiles(*settings.etcd_tls).credentials() if settings.etcd_tls else settings.credentials
        self.store = store or Store(settings.etcd, timeout=settings.etcd_timeout, credentials=credentials)
        self.keys = Keys(settings.namespace)
        self.board = Board(self.store, self.keys)
        self.name = settings.node_name()
        self.docker_host = settings.docker_host or default_docker_host()
        self.containers: str | None = None  # the Docker API version when container tasks can run here
        self.supervision = Supervision(settings.etcd, settings.ttl, settings.etcd_timeout, self.docker_host,
                                       credentials.config())
        self.table = RunTable(settings.slots, settings.long_slots)
        self.cache = Cache(self.keys, on_orphan=self._orphan_seen, on_kill=self.stop_requested)
        self.limits = Limits(settings.result_cap, settings.tail_cap, settings.grace)
        self.stopping = threading.Event()
        self.stopped = threading.Event()
        self.exit = Exit.OK
        self.crew = Crew(self._crashed)
        self._follower: Any = None
        self.web: WebChild | None = None  # the child process serving HTTP (conductor.web.child)
        self._mem_cache = (0.0, 0)
        self._started = time.time()
        self.claims: Claims
        self.session: Session
        self.finisher = Finisher(self)
        self.claimer = Claimer(self)
        self.keeper = Keeper(self)
        self.deadlines = Deadlines(self)
        self.cache.on_ready = self.deadlines.seen_ready
        self.gate = Gate(self)  # concurrency keys and rate limits: what the claimer may take
        self.clock = Clock(settings.clock_skew)  # judged against peers and etcd by the ClockWatch
        self.clock_watch = ClockWatch(self.store, self.keys, self.name, self.clock, self.stopping,
                                      on_change=lambda: self.session.refresh_info())
        self.scheduler = Scheduler(self.board, self.name, self.stopping, self.clock)

    # ---- start and stop ----------------------------------------------------------------------------

    def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.containers = reachable(self.docker_host)
        self.supervision.on("started", self._task_started)
        self.supervision.on("exited", self._task_exited)
        self.supervision.on_gone = self._supervisor_gone
        self.supervision.on_error = lambda exc: threading.Thread(
            target=self._crashed, args=("supervision", exc), name="stop", daemon=True).start()
        self.cache.on_failure = lambda exc: self._crashed("stream", exc)
        self.scheduler.cache.on_failure = lambda exc: self._crashed("schedules", exc)
        self.supervision.start()
        self.clock_watch.start()  # judged before the node key is written and before any chore
        self._open_session()
        self.claims = Claims(self.store, self.keys, self.name,
                             has_kill=lambda user, task: self.cache.kill_of(user, task) is not None,
                             side=counts.Writer(self.store, self.keys, lambda: lease_hex(self.session.lease) + "x"))
        self.deadlines.start()  # before the stream: its first listing sets the timers
        self._follower = self.store.follow(self.keys.stream(), self.cache, name="stream")
        self.gate.on_failure = lambda exc: self._crashed("gate", exc)
        self.gate.start()
        self.scheduler.start()
        self.crew.start("session", self.session.keep, self.stopping)
        self.crew.start("claim", self.claimer.run)
        self.crew.start("finish", self.finisher.run)
        self.crew.start("keeper", self.keeper.run)
        metrics.Sampler(self.name, self._sample, self.stopping).start()
        self.web = WebChild.start_for(self.settings, self.name, metrics.directory())  # None: no HTTP
        log.info("node %s ready: %d slots, labels %s, etcd %s, namespace %s, containers %s", self.name,
                 self.settings.slots, self.settings.labels or "{}", self.store.describe(), self.keys.namespace,
                 f"via {self.docker_host} ({self.containers})" if self.containers else "none")

    def _open_session(self) -> None:
        base = self.name
        for n in range(1, 100):
            self.session = Session(self.store, self.keys, self.name, self.settings.ttl, self._info,
                                   self.supervision, on_lost=self._session_lost)
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
                    threading.Thread(target=self.shutdown, args=(self.settings.drain,), name="shutdown",
                                     daemon=True).start()
                else:
                    log.warning("node %s: second signal; stopping now", self.name)
                    self.stop_now()
                    return int(Exit.FAILED)
        return int(self.exit)

    def shutdown(self, drain: bool = False, timeout: float | None = None) -> None:
        """Stop claiming; hand running tasks back (or let them finish); leave the cluster."""
        self.stopping.set()
        self.cache.poke()
        if not drain:
            for run in self.table.runs():
                run.kill("the node is shutting down", hand_back=True, grace=self.settings.shutdown_grace)
        deadline = None if timeout is None else time.monotonic() + timeout
        # a claim committing right now becomes a run in a moment: wait for those too
        while self.table.busy() and (deadline is None or time.monotonic() < deadline) \
                and not self.stopped.is_set():
            time.sleep(0.05)
        self.finisher.stop()
        self.crew.join(10, ("finish",))
        self._close()

    def stop_now(self, why: str = "the node was told to stop now") -> None:
        self.stopping.set()
        try:
            self.supervision.kill_all(why)
        except Exception:  # noqa: BLE001 - the supervisor may be gone already
            pass
        self._close()

    def _close(self) -> None:
        if self.stopped.is_set():
            return
        if self._follower:
            self._follower.stop()
        self.gate.stop()
        if self.web:
            self.web.stop()
        self.clock_watch.stop()
        self.scheduler.stop()
        self.deadlines.stop()
        self.supervision.close(revoke=True)  # kills what is left, then revokes the lease
        self.stopped.set()
        self.cache.poke()

    def _crashed(self, thread: str, exc: BaseException) -> None:
        """A thread died of a bug: nothing may run on half-broken. Kill, revoke, exit 70."""
        if self.stopped.is_set():
            return
        self.exit = Exit.INTERNAL
        self.stop_now(f"thread {thread} failed: {exc!r}")

    def _supervisor_gone(self) -> None:
        if self.stopping.is_set():
            return
        self.exit = Exit.SUPERVISOR_LOST
        self.stopping.set()
        threading.Thread(target=self._close, name="stop", daemon=True).start()

    # ---- node facts --------------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        vm = psutil.virtual_memory()
        info = {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "version": __version__,
                "labels": self.settings.labels, "slots": self.settings.slots, "cpus": os.cpu_count(),
                "memory": vm.total, "memory_available": vm.available, "load": os.getloadavg()[0],
                "platform": platform.platform(terse=True), "started": self._started,
                "containers": self.containers, "supervisor": self.supervision.pid, "at": self.clock.local(),
                **self.clock.record()}
        if hasattr(self, "session"):
            info.update(self.session.renewal_stats())
        if hasattr(self, "table"):  # what it runs, for `conductor nodes` (the keeper rewrites it on a change)
            ids = sorted(run.id for run in self.table.runs())
            info.update(running=len(ids), running_tasks=ids[:RUNNING_SHOWN])
        return info

    def _sample(self) -> tuple[dict[int, int], int, int]:
        """(ready tasks by priority, running tasks, free slots) for conductor.metrics.Sampler."""
        return self.cache.ready.depth_by_priority(), len(self.table.runs()), self.table.free()

    def available_memory(self) -> int:
        at, value = self._mem_cache
        if time.monotonic() - at > 1.0:
            value = psutil.virtual_memory().available
            self._mem_cache = (time.monotonic(), value)
        return value

    # ---- events ------------------------------------------------------------------------------------

    def _task_started(self, handle: str, pid: int, at: float) -> None:
        run = self.table.by_handle(handle)
        if run is not None:
            run.on_started(pid)

    def _task_exited(self, handle: str, status: int | None, cpu: float, ended: float, why: str | None) -> None:
        run = self.table.by_handle(handle)
        if run is None:
            log.warning("the supervisor reported the end of %s, which this node does not know", handle)
            return
        run.on_exited(status, cpu, ended, why)

    def stop_requested(self, user: str, task_id: str, request: dict[str, Any]) -> None:
        """A user asked to kill or skip a task: if it runs here and is theirs, stop it (the
        finish says why). The owner is the kill request's path, which only they can write."""
        run = self.table.get(task_id)
        if run is None or run.claimed.task.get("user") != user:
            return
        action = "skip" if request.get("action") == "skip" else "kill"
        verb = "skipped" if action == "skip" else "killed"
        log.info("task %s: %s by %s; stopping it", task_id, verb, request.get("by", "?"))
        run.kill(f"{verb} by {request.get('by', '?')}", grace=float(request.get("grace", 10.0)), stop=action)

    def _orphan_seen(self, user: str, task_id: str, lease: int) -> None:
        self.keeper.orphan(user, task_id, lease)

    def _session_lost(self) -> None:
        # the supervisor has killed every task already; their outcomes say why
        self.cache.poke()
