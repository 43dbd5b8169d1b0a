"""The node side of the board: claim, finish, hand back, recover.

A task's key (``q/u/<user>/tasks/<task>``) is its own queue entry and, while RUNNING, its claim.

Atomicity and fencing:

* :meth:`Claims.claim` takes a batch of QUEUED tasks in one transaction. For each task it compares
  the task's revision (the one the node's cache holds; 0 for a task that has no key yet, so the
  claim creates it: conductor/chunks.py), that neither the job nor the layer is
  paused, and once that the node's ``q/alive/<lease>`` key lives; then it rewrites the task
  RUNNING (naming node, lease and attempt) and adds the claims to the claim loop's counter key
  (RUNNING per layer). The transaction's revision is the claim's fencing token.
* :meth:`Claims.finish` commits outcomes only where the task is still that claim (its revision
  compared; a user's change meanwhile is read and committed over, see :meth:`_finish_one`) and
  the claim's lease is still alive (invariant 1): a node whose lease expired commits nothing,
  since etcd deleted its alive key when the lease ended. The task, result, log tail and the job's
  counter key (:mod:`conductor.counts`: one put per job of the batch) are one transaction.
* :meth:`Claims.recover` ends the run of a RUNNING task whose lease no longer lives (its node's
  lease expired), once, whichever node gets there first.

What a task becomes (claimed, finished, recovered) is decided by :mod:`conductor.lifecycle`; this
module only reads and writes what it decides.

Expected races return values (an empty list, ``False``, ``None``); failures raise from
:mod:`conductor.errors`.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Callable, cast

from . import codec, concurrency, counts, lifecycle, model, states, taskcache
from .batch import Group, Item, fit
from .errors import ConductorError
from .keys import Keys, lease_hex
from .lifecycle import Cause, Outcome
from .model import Value
from .ops import Compare, Delete, Get, Op, Put, absent, mod_is, present
from .store import Store

log = logging.getLogger("conductor.claims")

JOBS_PER_TXN = 8  # jobs one finish transaction may touch: each adds a counter put and its compare
COUNTER_BYTES = 400  # room kept per counter put (a counter value is a few numbers per layer)


class Ready:
    """A QUEUED task as a node's cache holds it: the task value and the key's revision.

    The cache gives the task's bytes and keeps them packed: a node may hold every ready task of
    a 100,000-task layer, and packed they take about half the memory (a queue of 100,000 `true`
    tasks: ~93 MiB instead of ~176 MiB). ``task`` unpacks a fresh copy on each read, so a caller
    may change what it gets. Given a map, it keeps the map."""

    __slots__ = ("id", "mod_revision", "_raw", "_value")

    def __init__(self, task: Value | bytes, mod_revision: int, task_id: str | None = None):
        if isinstance(task, bytes):
            self._raw: bytes | None = task
            self._value: Value | None = None
            self.id: str = task_id if task_id is not None else codec.unpack(task)["id"]
        else:
            self._raw, self._value = None, task
            self.id = task["id"]
        self.mod_revision = mod_revision

    @property
    def task(self) -> Value:
        return self._value if self._value is not None else codec.unpack(self._raw or b"")


@dataclass
class Claimed:
    """A task this node holds: the value it wrote, the task key's revision now (the claim's, or a
    user's change since) and the fencing token of its claim (the claim transaction's revision)."""

    task: Value
    task_rev: int
    claim_rev: int
    lease: int
    job: Value = field(default_factory=dict)
    layer: Value = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.task["id"]


@dataclass(frozen=True)
class Extra:
    """More of a finish's commit (a spawned batch's staged tasks), carried in ``Outcome.extra``.

    ``recommit`` rebuilds the ops and compares when they went stale; it raises
    :class:`~conductor.errors.ConductorError` when they cannot be rebuilt (the batch is then dropped
    and the run fails as SPAWN_INVALID)."""

    ops: list[Any] = field(default_factory=list)
    compare: list[Any] = field(default_factory=list)
    recommit: Callable[[], tuple[list[Any], list[Any]]] | None = None


@dataclass
class Finished:
    """What a committed finish did: the task's new value and state."""

    claimed: Claimed
    task: Value
    state: str
    revision: int = 0
    delta: counts.Delta = field(default_factory=dict)  # what it changes in its job's counts


class Claims:
    def __init__(self, store: Store, keys: Keys, node: str,
                 has_kill: Callable[[str, str], bool] | None = None, side: counts.Writer | None = None):
        self.store = store
        self.keys = keys
        self.node = node
        # does the node know of a kill request for (user, task)? A finish deletes one it knows of
        # and otherwise compares that there is none, so it writes no key for a request never made
        self.has_kill = has_kill or (lambda user, task: True)
        self.counters = counts.Counters(keys, self._read_value)  # the finish loop's
        self.claim_counters = counts.Counters(keys, self._read_value)  # the claim loop's
        # the counter key of this node's other changes (recoveries): one per node life, not per change
        own = "a" + secrets.token_hex(6)
        self.side = side or counts.Writer(store, keys, lambda: own)

    def _read_value(self, key: str) -> tuple[bytes, int] | None:
        kv = self.store.get(key)
        return (kv.value, kv.mod_revision) if kv else None

    # ---- claim ---------------------------------------------------------------------------------

    def claim(self, batch: list[Ready], lease: int, gate: Any = None) -> tuple[list[Claimed], set[str]]:
        """Claim every task of ``batch`` or none. Returns what was claimed, and on failure the
        ids found stale (taken by another node, changed, or paused) so the caller can drop them.
        ``gate`` (a :class:`conductor.gate.Gate`) adds the concurrency slots and rate permits the
        tasks take, in this same transaction; a failure of those compares names no task stale.
        Only the claim loop calls this (it owns the claim counter key)."""
        k, node = self.keys, self.node
        at = model.now()
        compare: list[Compare] = []
        ops: list[Op] = []
        running: list[Value] = []
        jobs: dict[str, str] = {}
        layers: dict[str, str] = {}
        deltas: dict[tuple[str, str], counts.Delta] = {}
        for entry in batch:
            task = lifecycle.decide_claim(entry.task, node, at, lease_hex(lease))  # a copy: the cache's stays
            if gate is not None:  # flow control hook: the slot this claim takes (conductor/gate.py)
                gate.mark(task)
            user = task["user"]
            running.append(task)
            compare.append(mod_is(k.task(user, task["id"]), entry.mod_revision))
            ops.append(Put(k.task(user, task["id"]), codec.pack(task)))
            jobs[task["job"]] = user
            layers[task["layer"]] = user
            counts.merge(deltas.setdefault(_job_of(task), {}), counts.change(task, states.RUNNING, None))
        if gate is not None:  # flow control hook: concurrency slots and rate logs (conductor/gate.py)
            flow_compare, flow_ops = gate.txn_parts(running, lease, at)
            compare += flow_compare
            ops += flow_ops
        writer = lease_hex(lease) + "c"
        count_compare, count_ops, after = self._count_ops(deltas, writer, self.claim_counters)
        reads: list[Op] = []
        reads += [Get(k.job(u, j)) for j, u in jobs.items()] + [Get(k.layer(u, lid)) for lid, u in layers.items()]
        compare += [absent(k.paused(u, i)) for i, u in (*jobs.items(), *layers.items())]
        compare.append(present(k.alive(lease)))  # a claim on a lease that ended would be an orphan at once
        check: list[Op] = []
        check += [Get(k.task(e.task["user"], e.id), keys_only=True) for e in batch]
        check += [Get(k.paused(u, i), keys_only=True) for i, u in (*jobs.items(), *layers.items())]
        try:
            res = self.store.txn(compare + count_compare, ops + count_ops + reads, check)
        except ConductorError:
            self._uncounted(deltas, writer, self.claim_counters)  # it may have committed: read the key again
            raise
        if not res.succeeded:
            stale = self._stale(batch, list(jobs), list(layers), res.responses)
            if not stale:  # no task moved: the counter key may be what failed (its owner may write it)
                self._uncounted(deltas, writer, self.claim_counters)
            return [], stale
        self._counted(after, writer, res.revision, self.claim_counters)
        values = [codec.unpack(r.kvs[0].value) if r.kvs else {} for r in res.responses[len(ops) + len(count_ops):]]
        job_values = dict(zip(jobs, values[:len(jobs)]))
        layer_values = dict(zip(layers, values[len(jobs):]))
        return [Claimed(task, res.revision, res.revision, lease, job_values[task["job"]], layer_values[task["layer"]])
                for task in running], set()

    @staticmethod
    def _stale(batch: list[Ready], jobs: list[str], layers: list[str], responses: list[Any]) -> set[str]:
        stale = set()
        for entry, r in zip(batch, responses):
            if (r.kvs[0].mod_revision if r.kvs else 0) != entry.mod_revision:  # 0: keyless, now keyed
                stale.add(entry.id)
        paused = {i for i, r in zip(jobs + layers, responses[len(batch):]) if r.kvs}
        for entry in batch:
            if entry.task["job"] in paused or entry.task["layer"] in paused:
                stale.add(entry.id)
        return stale

    # ---- finish --------------------------------------------------------------------------------

    def finish(self, items: list[tuple[Claimed, Outcome]],
               writer: str | None = None) -> tuple[list[Finished], list[Claimed]]:
        """Commit outcomes, fenced by each claim. Returns (committed, lost): a lost one's claim had
        expired or been taken, so nothing of it was written. Outcomes are grouped by
        :func:`conductor.batch.fit` into as few transactions as etcd's limits allow (at most
        ``JOBS_PER_TXN`` jobs each, for their counter puts); a group whose compares fail is retried
        one outcome at a time (each its own transaction). ``writer`` names the counter keys the
        counts go to (the node's lease, from its finish loop: one thread only); without it each
        transaction writes a counter key of its own."""
        committed: list[Finished] = []
        lost: list[Claimed] = []
        plain: list[Item] = []
        for claimed, outcome in items:
            if outcome.extra is not None:  # a spawned batch rewrites its layer and job: commit it on its own
                self._one(claimed, outcome, committed, lost, writer)
                continue
            compare, ops, finished = self._finish_txn(claimed, claimed.task, outcome)
            plain.append(Item(ops, compare, (claimed, outcome, finished)))
        for chunk in _few_jobs(plain):
            for group in fit(chunk, reserve_ops=JOBS_PER_TXN, reserve_compare=JOBS_PER_TXN,
                             reserve_bytes=JOBS_PER_TXN * COUNTER_BYTES):
                self._commit_group(group, committed, lost, writer)
        return committed, lost

    def _one(self, claimed: Claimed, outcome: Outcome, committed: list[Finished], lost: list[Claimed],
             writer: str | None) -> None:
        result = self._finish_one(claimed, outcome, writer)
        (committed.append(result) if result else lost.append(claimed))

    def _commit_group(self, group: Group, committed: list[Finished], lost: list[Claimed], writer: str | None) -> None:
        tags = cast("list[tuple[Claimed, Outcome, Finished]]", group.tags)
        if len(tags) > 1:
            deltas: dict[tuple[str, str], counts.Delta] = {}
            for _, _, finished in tags:
                counts.merge(deltas.setdefault(_job_of(finished.task), {}), finished.delta)
            compare, ops, after = self._count_ops(deltas, writer)
            res = self.store.txn(group.compare + compare, group.ops + ops)
            if res.succeeded:
                self._counted(after, writer, res.revision)
                for _, _, finished in tags:
                    finished.revision = res.revision
                    committed.append(finished)
                return
            self._uncounted(deltas, writer)
        for claimed, outcome, _ in tags:
            self._one(claimed, outcome, committed, lost, writer)

    def _count_ops(self, deltas: dict[tuple[str, str], counts.Delta], writer: str | None,
                   counters: counts.Counters | None = None
                   ) -> tuple[list[Compare], list[Op], dict[tuple[str, str], counts.Delta]]:
        """The counter writes of a claim or finish transaction: to the writer's keys (compared on
        what it last wrote; ``counters`` holds those, the finish loop's by default) or, without a
        writer, to fresh keys. Returns (compares, ops, new values)."""
        if writer is None:
            return [], counts.action_ops(self.keys, deltas), {}
        counters = counters or self.counters
        compare: list[Compare] = []
        ops: list[Op] = []
        after: dict[tuple[str, str], counts.Delta] = {}
        for (user, job), delta in deltas.items():
            if delta:
                c, o, after[(user, job)] = counters.ops(user, job, writer, delta)
                compare += c
                ops += o
        return compare, ops, after

    def _counted(self, after: dict[tuple[str, str], counts.Delta], writer: str | None, revision: int,
                 counters: counts.Counters | None = None) -> None:
        for (user, job), value in after.items():
            (counters or self.counters).committed(user, job, str(writer), value, revision)

    def _uncounted(self, deltas: dict[tuple[str, str], counts.Delta], writer: str | None,
                   counters: counts.Counters | None = None) -> None:
        """A failed transaction: read the writer's keys again next time (one may be what failed)."""
        for user, job in deltas:
            if writer is not None:
                (counters or self.counters).forget(user, job, writer)

    def _finish_one(self, claimed: Claimed, outcome: Outcome, writer: str | None = None) -> Finished | None:
        """Commit one outcome, reading the task again while only the task changed (a user's
        ``env set`` or ``pause`` meanwhile) or a kill request came. None when the claim is gone
        (the task taken over, its lease ended) or the task removed."""
        k = self.keys
        user = claimed.task["user"]
        task, task_rev = claimed.task, claimed.task_rev
        kill = self.has_kill(user, claimed.id)
        for _ in range(20):
            compare, ops, finished = self._finish_txn(claimed, task, outcome, task_rev, kill)
            deltas = {_job_of(finished.task): finished.delta}
            count_compare, count_ops, after = self._count_ops(deltas, writer)
            res = self.store.txn(compare + count_compare, ops + count_ops,
                                 [Get(k.task(user, claimed.id)), Get(k.alive(claimed.lease), keys_only=True),
                                  Get(k.kill(user, claimed.id), keys_only=True)])
            if res.succeeded:
                self._counted(after, writer, res.revision)
                finished.revision = res.revision
                return finished
            self._uncounted(deltas, writer)
            task_r, alive_r, kill_r = res.responses
            if not task_r.kvs:
                log.warning("task %s was removed while it ran; outcome not committed", claimed.id)
                return None
            current = codec.unpack(task_r.kvs[0].value)
            if not alive_r.kvs or not holds(current, claimed):
                log.warning("task %s: claim lost (lease expired or taken over); outcome %r not committed",
                            claimed.id, outcome.reason)
                return None
            task, task_rev = current, task_r.kvs[0].mod_revision
            claimed.task_rev = task_rev
            kill = bool(kill_r.kvs)
            outcome = _recommitted(outcome)
        return None

    def _finish_txn(self, claimed: Claimed, current: Value, o: Outcome, task_rev: int | None = None,
                    kill: bool | None = None) -> tuple[list[Compare], list[Op], Finished]:
        """The fenced transaction that commits ``o`` over ``current`` (what lifecycle decides)."""
        k, node = self.keys, self.node
        decision = lifecycle.decide(current, o, node, model.now())
        task = decision.task
        user, tid = task["user"], task["id"]
        compare = [mod_is(k.task(user, tid), task_rev or claimed.task_rev), present(k.alive(claimed.lease))]
        ops: list[Op] = []
        if kill if kill is not None else self.has_kill(user, tid):
            ops.append(Delete(k.kill(user, tid)))
        else:
            compare.append(absent(k.kill(user, tid)))
        ops += concurrency.release_ops(k, claimed.task)  # flow control hook: free the run's slot
        task.pop("conc_slot", None)
        ops += decision_ops(k, decision)  # counted per transaction (finish, _finish_one)
        if o.result is not None:
            ops.append(Put(k.result(user, tid), codec.pack({"data": o.result, "attempt": task["attempts"],
                                                             "node": node, "at": task["ended"]})))
        if o.log_tail or o.log_size or task["attempts"] > 1:
            ops.append(Put(k.log(user, tid), codec.pack({
                "data": o.log_tail, "size": o.log_size, "truncated": o.log_truncated,
                "attempt": task["attempts"], "node": node, "path": o.log_path, "at": task["ended"]})))
        ops += taskcache.memo_ops(k, task, claimed.job, claimed.layer, decision.state, o.result, node, bool(o.cached))
        extra = o.extra if isinstance(o.extra, Extra) else Extra()
        return compare + list(extra.compare), ops + list(extra.ops), Finished(
            claimed, task, decision.state, delta=counts.change(task, decision.tally, decision.untally))

    def fence(self, claimed: Claimed) -> list[Compare]:
        """The compares that hold while ``claimed`` is still this node's claim, for a write beside
        the finish (a log tail, a spawned batch): the task as last known, and the lease alive.
        After a user's change of the task they fail until :meth:`refresh` has read it again."""
        return [mod_is(self.keys.task(claimed.task["user"], claimed.id), claimed.task_rev),
                present(self.keys.alive(claimed.lease))]

    def refresh(self, claimed: Claimed) -> bool:
        """Read the task again: is it still ``claimed`` (then its revision is updated)?"""
        kv = self.store.get(self.keys.task(claimed.task["user"], claimed.id))
        if kv is None or not holds(codec.unpack(kv.value), claimed):
            return False
        claimed.task_rev = kv.mod_revision
        return True

    # ---- recovery ------------------------------------------------------------------------------

    def recover(self, user: str, task_id: str, lease: int) -> str | None:
        """End the run of a RUNNING task whose lease ended (its node's lease expired or was revoked
        while it held the task), as :func:`lifecycle.decide_lost` says (requeued as a disruption,
        ended as a pending kill or skip request asked, or ERRORED with no disruption left), once,
        whichever node gets there first (one transaction guarded by the task's revision and the
        lease's alive key being gone). Returns the task's new state, or None when there was
        nothing to do."""
        k = self.keys
        for _ in range(20):
            snap = self.store.read([Get(k.task(user, task_id)), Get(k.alive(lease), keys_only=True),
                                    Get(k.kill(user, task_id))])
            task_r, alive_r, stop_r = snap.responses
            if not task_r.kvs or alive_r.kvs:
                return None  # removed, or its node is alive: not an orphan
            task_kv = task_r.kvs[0]
            task = codec.unpack(task_kv.value)
            if task.get("state") != states.RUNNING or task.get("lease") != lease_hex(lease):
                return None  # finished, or claimed again, meanwhile
            stop = stop_r.kvs[0] if stop_r.kvs else None
            decision = lifecycle.decide_lost(task, task.get("node", "?"),
                                             codec.unpack(stop.value) if stop else None, self.node, model.now())
            if not decision.changed:
                return None
            guard = [mod_is(task_kv.key, task_kv.mod_revision), absent(k.alive(lease)),
                     mod_is(k.kill(user, task_id), stop.mod_revision) if stop else absent(k.kill(user, task_id))]
            ops: list[Op] = [Delete(k.kill(user, task_id))] + decision_ops(k, decision)  # its slots went with its lease
            if self.side.txn(guard, ops, decision).succeeded:
                log.info("task %s %s: %s", task_id, decision.state, decision.done)
                return decision.state
        return None

    def orphans(self) -> list[tuple[str, str, int]]:
        """(user, task, lease) of every RUNNING task whose lease has no alive key (one snapshot of
        the leases, the tasks paged: a fallback for a node whose stream is not live)."""
        k = self.keys
        alive = {k.last(kv.key) for kv in self.store.scan(k.alive(), keys_only=True)[0]}
        out = []
        for kv in self.store.iter_prefix(k.q("u")):  # every user's jobs, layers and tasks
            kind, user, task_id = k.split_stream(kv.key)
            task = codec.unpack(kv.value) if kind == "tasks" else {}
            if task.get("state") == states.RUNNING and str(task.get("lease", "")) not in alive:
                out.append((user, task_id, _lease_of(task)))
        return out


def holds(task: Value, claimed: Claimed) -> bool:
    """Is ``task`` (as read now) still the run ``claimed`` started: RUNNING, on its lease, the
    same attempt? A user's change of a running task keeps these; a take-over does not."""
    return (task.get("state") == states.RUNNING and task.get("lease") == lease_hex(claimed.lease)
            and task.get("attempts") == claimed.task.get("attempts"))


def _lease_of(task: Value) -> int:
    try:
        return int(str(task.get("lease", "0")), 16)
    except ValueError:
        return 0


def decision_ops(k: Keys, decision: lifecycle.Decision) -> list[Op]:
    """The write of a lifecycle decision: the task's new value, which is also its queue entry
    (for the caller's one transaction). What it changes in its job's counts is the caller's to
    add (:class:`counts.Writer`, or a finish's counter puts)."""
    task = decision.task
    return [Put(k.task(task["user"], task["id"]), codec.pack(task))]


def _job_of(task: Value) -> tuple[str, str]:
    return task["user"], task["job"]


def _few_jobs(items: list[Item]) -> list[list[Item]]:
    """Items cut, in order, into runs that touch at most ``JOBS_PER_TXN`` jobs each (each job of a
    transaction adds one counter put to it)."""
    out: list[list[Item]] = [[]]
    jobs: set[tuple[str, str]] = set()
    for item in items:
        job = _job_of(cast("tuple[Claimed, Outcome, Finished]", item.tag)[2].task)
        if job not in jobs and len(jobs) >= JOBS_PER_TXN:
            out.append([])
            jobs = set()
        jobs.add(job)
        out[-1].append(item)
    return [chunk for chunk in out if chunk]


def _recommitted(outcome: Outcome) -> Outcome:
    """``outcome`` with its spawned batch's part rebuilt after its compares went stale (the target
    layer or job moved on); a batch that cannot be rebuilt fails the run as a bad spawn file."""
    extra = outcome.extra
    if not isinstance(extra, Extra) or extra.recommit is None:
        return outcome
    try:
        ops, compare = extra.recommit()
    except ConductorError as exc:  # e.g. the target layer started meanwhile
        return replace(outcome, cause=Cause.SPAWN_INVALID, reason=f"spawn file: {exc}", extra=None)
    return replace(outcome, extra=Extra(ops, compare, extra.recommit))
