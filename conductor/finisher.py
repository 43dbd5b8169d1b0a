"""A node's finish loop: commit outcomes in batches, fenced by each claim, then settle drained layers.

Outcomes that arrive together (within a couple of milliseconds, while other runs of the node are still
alive) share one transaction; a lone outcome commits at once. While etcd
is unreachable the outcomes are kept and the commit is retried with backoff: the claims fence them
anyway (an outcome whose claim is gone is dropped). Any other error is a bug: it is not retried
forever, it stops the node loudly (see :class:`conductor.crew.Crew`).
"""
from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING

import dataclasses

from . import lifecycle, metrics, spawn, states
from .claims import Extra
from .lifecycle import Cause, Outcome
from .errors import ConductorError, NoSpace, RequestRefused, StoreError
from .keys import lease_hex
from .executor import Run

if TYPE_CHECKING:
    from .parts import Node

log = logging.getLogger("conductor.node")

FINISH_BATCH = 32  # most outcomes taken at once; claims.finish splits them to fit etcd's limits
GATHER = 0.002  # seconds to wait for more outcomes to share one transaction (while more runs are alive)


class Finisher:
    def __init__(self, node: "Node"):
        self.node = node
        self._done: queue.Queue[tuple[Run, Outcome] | None] = queue.Queue()

    def run_done(self, run: Run, outcome: Outcome) -> None:
        """A run ended (called from the supervisor's event thread): free its slots, queue its outcome."""
        node = self.node
        ran = outcome.ended - outcome.started if outcome.started and outcome.ended else None
        node.table.ended(run, ran)  # how long it ran makes its layer short or long (runtable.py)
        node.cache.poke()
        self._done.put((run, outcome))

    def stop(self) -> None:
        self._done.put(None)

    def run(self) -> None:
        while True:
            item = self._done.get()
            if item is None:
                return
            items = [item]
            gather_until = time.monotonic() + GATHER  # outcomes that come together commit together
            while len(items) < FINISH_BATCH:
                # wait for more only while other runs of this node are alive: a lone outcome (one
                # task's path, post -> result) commits at once, with whatever is queued already
                left = gather_until - time.monotonic() if self.node.table.alive() else 0.0
                try:
                    more = self._done.get(timeout=left) if left > 0 else self._done.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._done.put(None)
                    break
                items.append(more)
            self.commit(items)

    def commit(self, items: list[tuple[Run, Outcome]]) -> None:
        """Commit outcomes (fenced by their claims), say so, settle the layers they drained, then
        tidy up: the settle comes before the scratch files' removal, it is what ``wait`` waits for."""
        node = self.node
        items = [(run, lifecycle.with_kill_request(outcome, node.cache.kill_of(run.claimed.task["user"], run.id)))
                 for run, outcome in items]
        items = [(run, self._prepare_spawn(run, outcome) if outcome.ok else outcome) for run, outcome in items]
        committed, lost = self._store(items)
        for f in committed:
            task = f.task
            extra = f" (exit {task['exit_code']})" if task.get("exit_code") not in (None, 0) else ""
            log.info("task %s %s %s: %s%s", task["id"], task["name"], f.state,
                     task["records"][-1]["reason"], extra if f.state != states.QUEUED else "")
        for c in lost:
            log.warning("task %s: outcome dropped, this node no longer holds it", c.id)
        self._settle_drained(committed)
        metrics.tasks_finished(node.name, (f.state for f in committed))
        for run, _ in items:
            run.cleanup()
            node.table.remove(run)

    def _store(self, items: list[tuple[Run, Outcome]]) -> tuple[list, list]:
        """claims.finish, retried with backoff while etcd is away or full; (committed, lost)."""
        backoff = 0.1
        while True:
            try:
                return self.node.claims.finish([(run.claimed, outcome) for run, outcome in items], self._writer())
            except RequestRefused as exc:  # the same request can never pass: store less, once
                return self._commit_bare(items, exc)
            except StoreError as exc:  # etcd away or full: keep the outcomes; the claims fence them anyway
                # a full etcd was said once (conductor.store.SpaceWatch), not at every retry
                (log.debug if isinstance(exc, NoSpace) else log.warning)("cannot commit %d outcome(s) yet: %s",
                                                                          len(items), exc)
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _settle_drained(self, committed: list) -> None:
        """Settle each job whose layer a final outcome may have drained: once the cache has reached
        the finish's revision (so it knows every claim and ready task of the layer as of then), a
        layer with none left is settled now; if the cache cannot tell, settle anyway (idempotent)."""
        layers = {(f.task["job"], f.task["layer"], f.task["user"]) for f in committed if f.state in states.FINAL}
        if not layers:
            return
        synced = self.node.cache.wait_revision(max(f.revision for f in committed), timeout=2.0)
        for job, layer, user in layers:
            if not synced or not self.node.cache.layer_busy(layer):
                self.settle(job, user)

    def _writer(self) -> str:
        """The counter keys this loop writes (conductor/counts.py): its node's lease, since this
        thread is the only one that writes them."""
        return lease_hex(self.node.session.lease)

    def _commit_bare(self, items: list[tuple[Run, Outcome]], error: Exception) -> tuple[list, list]:
        """etcd refused the outcomes' transaction as malformed (it should fit: a bug, or an etcd with
        smaller limits). Commit each outcome alone; one still refused becomes a bare failure without
        result, log or spawned tasks, so the task ends and its claim is released. If even that is
        refused, the error goes up and the node stops (loudly)."""
        log.error("etcd refused %d outcome(s) as malformed (%s); committing them one by one", len(items), error)
        committed, lost = [], []
        for run, outcome in items:
            try:
                done, gone = self.node.claims.finish([(run.claimed, outcome)], self._writer())
            except RequestRefused as exc:
                bare = Outcome(Cause.INTERNAL, f"its outcome ({outcome.reason}) could not be stored: {exc}",
                               outcome.exit_code, outcome.started, outcome.ended, outcome.usage)
                done, gone = self.node.claims.finish([(run.claimed, bare)], self._writer())
            committed += done
            lost += gone
        return committed, lost

    def _prepare_spawn(self, run: Run, outcome: Outcome) -> Outcome:
        """Stage the tasks a finished task wrote to $CONDUCTOR_SPAWN into the next layer; their
        commit joins the task's own finish transaction (so they are added exactly once)."""
        try:
            with open(run.spawn_path, "rb") as f:
                data = f.read()
        except OSError:
            return outcome
        if not data.strip():
            return outcome
        node = self.node
        backoff = 0.1
        while True:
            try:
                stager = spawn.stage(node.board, run.claimed, data, node.name)
                break
            except StoreError as exc:  # etcd away: the staging is fenced by the claim, try again
                log.warning("task %s: cannot stage its spawned tasks yet: %s", run.id, exc)
            except ConductorError as exc:
                return dataclasses.replace(outcome, cause=Cause.SPAWN_INVALID, reason=f"spawn file: {exc}")
            time.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
        ops, compare = stager.commit_ops(node.name)
        return dataclasses.replace(outcome, extra=Extra(ops, compare, lambda: stager.commit_ops(node.name)))

    def settle(self, job: str, user: str) -> None:
        try:
            self.node.board.settle(job, user, node=self.node.name)
        except StoreError as exc:
            log.warning("could not settle job %s now (%s); the keeper will retry", job, exc)
            self.node.table.settle_later(job, user)
