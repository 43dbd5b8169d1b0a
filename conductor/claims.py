"""The node side of the board: claim, finish, hand back, recover.

Atomicity and fencing:

* :meth:`Claims.claim` takes a batch of ready tasks in one transaction. For each task it compares
  the ready marker's and the task's revision (the two are written together, so they are equal) and
  that no claim exists, and that neither the job nor the layer is paused; then it deletes the ready
  marker, creates the claim on the node's lease, writes the durable run marker and the task as
  RUNNING. The claim's create revision (the transaction's revision) is the fencing token.
* :meth:`Claims.finish` commits outcomes only where the claim still has that create revision
  (invariant 1): a node whose claim expired commits nothing. The task, its tally or ready marker,
  result, log tail, and the removal of claim and run marker are one transaction.
* :meth:`Claims.recover` requeues a task whose run marker outlived its claim (its node's lease
  expired), once, whichever node gets there first.

Expected races return values (an empty list, ``False``, ``None``); failures raise from
:mod:`conductor.errors`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from . import codec, model, states
from .errors import ConductorError
from .keys import Keys, lease_hex
from .model import Value
from .ops import Compare, Delete, Get, Op, Put, absent, created_at, mod_is
from .store import MAX_REQUEST_BYTES, MAX_TXN_OPS, Store, op_size

log = logging.getLogger("conductor.claims")


@dataclass
class Ready:
    """A ready marker as a node's cache holds it: the task value and the marker's revision."""

    task: Value
    mod_revision: int

    @property
    def id(self) -> str:
        return self.task["id"]


@dataclass
class Claimed:
    """A task this node holds: the value it wrote and the fencing token of its claim."""

    task: Value
    task_rev: int
    claim_rev: int
    lease: int
    job: Value = field(default_factory=dict)
    layer: Value = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.task["id"]


@dataclass
class Outcome:
    """How one run of a task ended, as the executor saw it."""

    ok: bool
    reason: str
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    usage: dict[str, Any] | None = None
    result: bytes | None = None
    log_tail: bytes = b""
    log_size: int = 0
    log_path: str | None = None
    log_truncated: bool = False
    retry: bool = True  # False: a failure that must not be retried
    hand_back: bool = False  # True: give the task back without counting the attempt
    stop: str | None = None  # "kill" or "skip": a user stopped it (see q/kills/<task>)
    extra_ops: list[Any] = field(default_factory=list)  # more of the same commit (a spawned batch)
    extra_compare: list[Any] = field(default_factory=list)
    recommit: Any = None  # () -> (extra_ops, extra_compare) again, after the compares went stale


@dataclass
class Finished:
    """What a committed finish did: the task's new value and state."""

    claimed: Claimed
    task: Value
    state: str
    revision: int = 0


class Claims:
    def __init__(self, store: Store, keys: Keys, node: str):
        self.store = store
        self.keys = keys
        self.node = node

    # ---- claim ---------------------------------------------------------------------------------

    def claim(self, batch: list[Ready], lease: int) -> tuple[list[Claimed], set[str]]:
        """Claim every task of ``batch`` or none. Returns what was claimed, and on failure the
        ids found stale (taken by another node, changed, or paused) so the caller can drop them."""
        k, node = self.keys, self.node
        at = model.now()
        compare: list[Compare] = []
        ops: list[Op] = []
        running: list[Value] = []
        jobs: dict[str, str] = {}
        layers: dict[str, str] = {}
        for entry in batch:
            task = _own_copy(entry.task)
            task_rev = task.pop("task_rev", None) or entry.mod_revision  # see Board.enqueue
            user = task["user"]
            task["attempts"] = task.get("attempts", 0) + 1
            task.update(node=node, started=at, ended=None, exit_code=None, usage=None, reason=None)
            model.move(task, states.RUNNING, f"claimed by {node} (attempt "
                       f"{task['attempts'] - task.get('retry_base', 0)} of {task['max_attempts']})", node, at)
            running.append(task)
            compare += [mod_is(k.ready(task["id"]), entry.mod_revision),
                        mod_is(k.task(user, task["id"]), task_rev), absent(k.claim(task["id"]))]
            claim = {"node": node, "lease": lease_hex(lease), "attempt": task["attempts"], "user": user, "at": at}
            ops += [Delete(k.ready(task["id"])),
                    Put(k.claim(task["id"]), codec.pack(claim), lease=lease),
                    Put(k.run(task["id"]), codec.pack({"node": node, "user": user, "lease": lease_hex(lease)})),
                    Put(k.task(user, task["id"]), codec.pack(task))]
            jobs[task["job"]] = user
            layers[task["layer"]] = user
        reads: list[Op] = []
        reads += [Get(k.job(u, j)) for j, u in jobs.items()] + [Get(k.layer(u, lid)) for lid, u in layers.items()]
        compare += [absent(k.paused(j)) for j in jobs] + [absent(k.paused(lid)) for lid in layers]
        check: list[Op] = []
        check += [Get(k.ready(e.id), keys_only=True) for e in batch]
        check += [Get(k.paused(j), keys_only=True) for j in jobs] + [Get(k.paused(lid), keys_only=True) for lid in layers]
        res = self.store.txn(compare, ops + reads, check)
        if not res.succeeded:
            return [], self._stale(batch, list(jobs), list(layers), res.responses)
        values = [codec.unpack(r.kvs[0].value) if r.kvs else {} for r in res.responses[len(ops):]]
        job_values = dict(zip(jobs, values[:len(jobs)]))
        layer_values = dict(zip(layers, values[len(jobs):]))
        return [Claimed(task, res.revision, res.revision, lease, job_values[task["job"]], layer_values[task["layer"]])
                for task in running], set()

    @staticmethod
    def _stale(batch: list[Ready], jobs: list[str], layers: list[str], responses: list[Any]) -> set[str]:
        stale = set()
        for entry, r in zip(batch, responses):
            if not r.kvs or r.kvs[0].mod_revision != entry.mod_revision:
                stale.add(entry.id)
        paused = {i for i, r in zip(jobs + layers, responses[len(batch):]) if r.kvs}
        for entry in batch:
            if entry.task["job"] in paused or entry.task["layer"] in paused:
                stale.add(entry.id)
        return stale

    # ---- finish --------------------------------------------------------------------------------

    def finish(self, items: list[tuple[Claimed, Outcome]]) -> tuple[list[Finished], list[Claimed]]:
        """Commit outcomes, fenced by each claim. Returns (committed, lost): a lost one's claim had
        expired or been taken, so nothing of it was written. Outcomes are grouped into as few
        transactions as etcd's op and size limits allow; a group whose compares fail is retried
        one outcome at a time."""
        committed: list[Finished] = []
        lost: list[Claimed] = []
        group: list[tuple[Claimed, Outcome, list[Compare], list[Op], Finished]] = []
        size = 0
        for claimed, outcome in items:
            if outcome.extra_ops:  # a spawned batch rewrites its layer and job: commit it on its own
                result = self._finish_one(claimed, outcome)
                (committed.append(result) if result else lost.append(claimed))
                continue
            compare, ops, finished = self._finish_txn(claimed, claimed.task, outcome)
            n = sum(op_size(op) for op in ops)
            if group and (sum(len(g[3]) for g in group) + len(ops) > MAX_TXN_OPS
                          or sum(len(g[2]) for g in group) + len(compare) > MAX_TXN_OPS
                          or size + n > MAX_REQUEST_BYTES):
                self._commit_group(group, committed, lost)
                group, size = [], 0
            group.append((claimed, outcome, compare, ops, finished))
            size += n
        if group:
            self._commit_group(group, committed, lost)
        return committed, lost

    def _commit_group(self, group: list[tuple[Claimed, Outcome, list[Compare], list[Op], Finished]],
                      committed: list[Finished], lost: list[Claimed]) -> None:
        if len(group) > 1:
            res = self.store.txn([c for g in group for c in g[2]], [o for g in group for o in g[3]])
            if res.succeeded:
                for g in group:
                    g[4].revision = res.revision
                    committed.append(g[4])
                return
        for claimed, outcome, *_ in group:
            result = self._finish_one(claimed, outcome)
            (committed.append(result) if result else lost.append(claimed))

    def _finish_one(self, claimed: Claimed, outcome: Outcome) -> Finished | None:
        k = self.keys
        user = claimed.task["user"]
        task, task_rev = claimed.task, claimed.task_rev
        for _ in range(20):
            compare, ops, finished = self._finish_txn(claimed, task, outcome, task_rev)
            res = self.store.txn(compare, ops, [Get(k.claim(claimed.id)), Get(k.task(user, claimed.id))])
            if res.succeeded:
                finished.revision = res.revision
                return finished
            claim_r, task_r = res.responses
            if not claim_r.kvs or claim_r.kvs[0].create_revision != claimed.claim_rev:
                log.warning("task %s: claim lost (lease expired or taken over); outcome %r not committed",
                            claimed.id, outcome.reason)
                return None
            if not task_r.kvs:
                log.warning("task %s was removed while it ran; outcome not committed", claimed.id)
                return None
            task, task_rev = codec.unpack(task_r.kvs[0].value), task_r.kvs[0].mod_revision
            if outcome.recommit is not None:  # the spawned batch's layer or job moved on: redo its part
                try:
                    outcome.extra_ops, outcome.extra_compare = outcome.recommit()
                except ConductorError as exc:  # e.g. the target layer started meanwhile
                    outcome.extra_ops, outcome.extra_compare, outcome.recommit = [], [], None
                    outcome.ok, outcome.reason = False, f"spawn file: {exc}"
        return None

    def _finish_txn(self, claimed: Claimed, current: Value, o: Outcome,
                    task_rev: int | None = None) -> tuple[list[Compare], list[Op], Finished]:
        k, node = self.keys, self.node
        task = _own_copy(current)
        user, tid = task["user"], task["id"]
        task.update(exit_code=o.exit_code, ended=o.ended or model.now(), usage=o.usage, reason=o.reason)
        if o.started:
            task["started"] = o.started
        if task["state"] != states.RUNNING:  # moved meanwhile; keep that state
            new_state = task["state"]
        elif o.stop == "skip":
            new_state = model.move(task, states.SKIPPED, o.reason, node)["state"]
        elif o.stop == "kill":
            new_state = model.move(task, states.ERRORED, o.reason, node)["state"]
        elif o.hand_back:
            task["attempts"] = max(0, task["attempts"] - 1)
            new_state = model.move(task, states.QUEUED, f"handed back by {node}: {o.reason}; attempt not counted", node)["state"]
        elif o.ok:
            new_state = model.move(task, states.COMPLETED, f"{o.reason} on {node}", node)["state"]
        elif o.retry and model.attempts_left(task) > 0:
            model.add_record(task, states.ERRORED, f"{o.reason} on {node}", node)
            done = task["attempts"] - task.get("retry_base", 0)
            new_state = model.move(task, states.QUEUED,
                                   f"retry: attempt {done + 1} of {task['max_attempts']} next", node)["state"]
        else:
            done = task["attempts"] - task.get("retry_base", 0)
            left = "" if not o.retry else f"; no attempt left ({done} of {task['max_attempts']})"
            new_state = model.move(task, states.ERRORED, f"{o.reason} on {node}{left}", node)["state"]
        data = codec.pack(task)
        compare = [created_at(k.claim(tid), claimed.claim_rev), mod_is(k.task(user, tid), task_rev or claimed.task_rev)]
        ops: list[Op] = [Delete(k.claim(tid)), Delete(k.run(tid)), Delete(k.kill(tid)), Put(k.task(user, tid), data)]
        if new_state == states.QUEUED:
            ops.append(Put(k.ready(tid), data))
        elif new_state in states.FINAL and current["state"] == states.RUNNING:
            ops.append(Put(k.tally(user, task["job"], new_state, tid), b""))
        if o.result is not None:
            ops.append(Put(k.result(user, tid), codec.pack({"data": o.result, "attempt": task["attempts"],
                                                             "node": node, "at": task["ended"]})))
        if o.log_tail or o.log_size or task["attempts"] > 1:
            ops.append(Put(k.log(user, tid), codec.pack({
                "data": o.log_tail, "size": o.log_size, "truncated": o.log_truncated,
                "attempt": task["attempts"], "node": node, "path": o.log_path, "at": task["ended"]})))
        return compare + list(o.extra_compare), ops + list(o.extra_ops), Finished(claimed, task, new_state)

    # ---- recovery ------------------------------------------------------------------------------

    def recover(self, task_id: str, lease: int) -> str | None:
        """Requeue (or fail, with no attempt left) a task whose node's lease expired while it held
        the task. Returns the task's new state, or None when there was nothing to do."""
        k = self.keys
        marker_key = k.run(task_id)
        for _ in range(20):
            marker = self.store.get(marker_key)
            if marker is None or int(codec.unpack(marker.value).get("lease", "0"), 16) != lease:
                return None
            user = codec.unpack(marker.value).get("user", "")
            snap = self.store.read([Get(k.claim(task_id)), Get(k.task(user, task_id))])
            claim_r, task_r = snap.responses
            if claim_r.kvs and claim_r.kvs[0].lease == lease:
                return None  # its node is alive: not an orphan
            lost_node = codec.unpack(marker.value).get("node", "?")
            guard = [mod_is(marker_key, marker.mod_revision), absent(k.claim(task_id))]
            if not task_r.kvs:
                self.store.txn(guard, [Delete(marker_key)])
                return None
            task_kv = task_r.kvs[0]
            task = codec.unpack(task_kv.value)
            guard.append(mod_is(task_kv.key, task_kv.mod_revision))
            ops: list[Op] = [Delete(marker_key)]
            if task["state"] != states.RUNNING or task.get("node") != lost_node:
                if self.store.txn(guard, ops).succeeded:
                    return None
                continue
            why = f"node {lost_node} was lost (its lease expired) during attempt {task['attempts']}"
            stop = self.store.get(k.kill(task_id))
            if stop is not None:  # a user asked to stop it: do that instead of running it again
                request = codec.unpack(stop.value)
                new = states.SKIPPED if request.get("action") == "skip" else states.ERRORED
                verb = "skipped" if new == states.SKIPPED else "killed"
                model.move(task, new, f"{verb} by {request.get('by', '?')} ({why})", self.node)
                task["ended"] = model.now()
                ops += [Put(task_kv.key, codec.pack(task)), Put(k.tally(user, task["job"], new, task_id), b""),
                        Delete(k.kill(task_id))]
                guard.append(mod_is(stop.key, stop.mod_revision))
            elif model.attempts_left(task) > 0:
                model.move(task, states.QUEUED, why, self.node)
                data = codec.pack(task)
                ops += [Put(task_kv.key, data), Put(k.ready(task_id), data)]
            else:
                model.move(task, states.ERRORED, f"{why}; no attempt left", self.node)
                task["ended"] = model.now()
                data = codec.pack(task)
                ops += [Put(task_kv.key, data), Put(k.tally(user, task["job"], states.ERRORED, task_id), b"")]
            if self.store.txn(guard, ops).succeeded:
                log.info("task %s %s: %s", task_id, task["state"], why)
                return task["state"]
        return None

    def orphans(self) -> list[tuple[str, int]]:
        """(task, lease) of every run marker without a live claim of that lease."""
        k = self.keys
        snap = self.store.read([Get.prefix(k.run()), Get.prefix(k.claim(), keys_only=True)])
        claimed = {kv.key[len(k.claim()):]: kv.lease for kv in snap.responses[1].kvs}
        out = []
        for kv in snap.responses[0].kvs:
            task_id = kv.key[len(k.run()):]
            lease = int(codec.unpack(kv.value).get("lease", "0"), 16)
            if claimed.get(task_id) != lease:
                out.append((task_id, lease))
        return out

    def present_claim(self, task_id: str, claim_rev: int) -> bool:
        kv = self.store.get(self.keys.claim(task_id))
        return kv is not None and kv.create_revision == claim_rev


def _own_copy(task: Value) -> Value:
    """A copy safe to change with model.move and top-level assignments (records is the only
    nested value those change), several times cheaper than a deep copy."""
    out = dict(task)
    out["records"] = list(task.get("records", []))
    return out
