"""Posting jobs and moving layers on: the writes that any client or node may make.

Atomicity, per method:

* :meth:`Board.post` writes a job that fits one request (by count and bytes, see
  :mod:`conductor.batch`) in one transaction. A bigger job is written as chunks of tasks first
  (the first chunk also writes ``pending/<job>`` and is written alone, before any other; the
  rest go several at a time, see :meth:`Store.txn_many`, and all have ended before the head is
  sent), then its head (job, layers, index, active, pause markers, secrets; the layers go with
  the tasks when there are too many for one request) in one transaction that deletes the
  pending marker, so a visible job is always a complete job. A failed chunk makes post remove
  what it wrote; a poster killed mid-way leaves a pending marker for
  :func:`conductor.partial.collect`. The first layers are then queued by :meth:`Board.enqueue`.
* :meth:`Board.settle` is idempotent and safe to run from any number of nodes at once: it writes
  the plan of :func:`layerplan.plan` (which layers end, which start, the job's state) in one
  transaction, guarded by the revisions of the job and of every layer it writes and by compares
  that no task of a drained layer changed since the counts that found it drained were read (a
  range compare over the layer's tasks). It is how layer order (invariant 3) is kept.
* :meth:`Board.enqueue` queues a running layer's tasks (PENDING rewritten QUEUED: a task key is
  its own queue entry) in groups that fit etcd's limits, then marks the layer ``enqueued``; a
  layer is never finished before that.

Every multi-key write here is sized with :mod:`conductor.batch`, by count and by bytes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import batch, codec, counts, footprint, ids, layerplan, model, owners, partial, seal, states
from .batch import Item, fit, fits, op_size
from .errors import Refused, StoreError
from .keys import Keys
from .model import Value
from .keys import prefix_end
from .ops import KV, Compare, Delete, Get, Op, Put, absent, mod_is
from .store import Store

log = logging.getLogger("conductor.board")

INLINE_TASKS = 40  # starting layers with at most this many tasks in all are read to be queued in the settle txn
SETTLE_LIMITS = (48, 24, 12, 6, 3, 1)  # layers moved per settle txn, tried in turn until the txn fits
MAX_TRIES = 50

# Fields of a new task left out of what post stores while they hold these values: every reader
# takes them with .get and this default (views.with_etag puts them back for show and the API), and
# a 100,000-task job is that much smaller.
UNSTORED_DEFAULTS: dict[str, Any] = {"shell": False, "env": {}, "cwd": None, "timeout": None, "priority": 0,
                                     "needs": {}, "paused_at": 0, "usage": None}

_SettleTxn = tuple[list[Compare], list[Op], set[int]]  # compares, ops, the started layers queued inline


class Board:
    """Reads and writes of jobs, layers and tasks through one :class:`Store`."""

    def __init__(self, store: Store, keys: Keys):
        self.store = store
        self.keys = keys

    # ---- lookups -----------------------------------------------------------------------------

    def owner(self, job_id: str, first: str | None = None) -> str:
        """The user who owns a job; raises NotFound. Tries ``first`` (most often the caller's own
        user), then every account Conductor knows (``accounts/``): a read only nodes and admins
        may make, since the owner is in the key's path and nowhere else."""
        return owners.find(self.store, self.keys, job_id, first)

    def resolve_job(self, text: str, user: str, others: bool = True) -> tuple[str, str]:
        """(job id, owner) from a full id, a unique prefix or suffix of one, or the name of
        ``user``'s newest job of that name; ``user``'s jobs first, then (``others``) every
        account's. See :mod:`conductor.resolve`. Raises NotFound, Ambiguous (naming up to five
        matching ids), PermissionDenied when only another user's jobs could match."""
        from . import resolve

        return resolve.resolve_job(self.store, self.keys, text, user,
                                   (lambda: owners.users(self.store, self.keys)) if others else None)

    def load(self, key: str) -> tuple[Value, KV] | None:
        kv = self.store.get(key)
        return (codec.unpack(kv.value), kv) if kv else None

    # ---- posting -----------------------------------------------------------------------------

    def post(self, spec: dict[str, Any], user: str, *, source: dict[str, Any] | None = None,
             job_id: str | None = None, node: str | None = None, secrets: dict[str, str] | None = None,
             meta: dict[str, Any] | None = None) -> str:
        """Write a validated job spec; returns its id. See the module docstring for atomicity.

        With ``job_id`` given and already posted, nothing is written (posting is idempotent).
        Raises InvalidSpec (nothing written) for a job over the stored-size caps, and StoreError
        when a chunk of a big job could not be written (what it wrote is removed first)."""
        if job_id and self.store.get(self.keys.job(user, job_id)) is not None:
            return job_id
        given = job_id is not None
        job_id = job_id or ids.new_job_id()
        job, layers, tasks, started = self._values(spec, user, job_id, source, meta, bool(secrets), node)
        exists = [absent(self.keys.job(user, job_id))]
        if job["tasks"] + len(layers) + 4 <= batch.MAX_TXN_OPS:  # else it cannot fit: do not pack it twice
            queued = [[_queued(task, node) for task in lt] if i in started else lt for i, lt in enumerate(tasks)]
            for i in started:
                layers[i]["enqueued"] = True  # its tasks go QUEUED in this same transaction
            whole = self._task_ops(queued) + self._head_ops(job, layers, secrets)
            if fits(whole, exists):
                if not self.store.txn(exists, whole).succeeded:
                    return self._exists(job_id, given)
                self._log_post(job, layers)
                return job_id
        for i in started:
            layers[i]["enqueued"] = False  # queued after the head: see _post_chunked
        revs = self._post_chunked(job, layers, tasks, secrets)  # every task PENDING
        if revs is None:
            return self._exists(job_id, given)
        self._log_post(job, layers)
        for i in started:
            self.enqueue(user, layers[i]["id"], [(task, revs[task["id"]]) for task in tasks[i]], node=node)
        if started:
            self.settle(job_id, user, node)
        return job_id

    @staticmethod
    def _values(spec: dict[str, Any], user: str, job_id: str, source: dict[str, Any] | None,
                meta: dict[str, Any] | None, secrets: bool,
                node: str | None) -> tuple[Value, list[Value], list[list[Value]], list[int]]:
        """The values a post writes, checked against the stored-size caps (raises InvalidSpec),
        with the layers that start at once RUNNING (their tasks still PENDING: the caller queues
        them, in the post's one transaction or by enqueue after the head); and those layers."""
        spec = {**spec, "on_success": (meta or {}).get("on_success", []),
                "on_failure": (meta or {}).get("on_failure", [])}
        job, layers, tasks = footprint.build(spec, user, job_id, source or {"kind": "api"})
        footprint.check(job, layers, tasks)  # as spec.check_stored (conductor check) does
        tasks = [[_compact(task) for task in layer_tasks] for layer_tasks in tasks]
        if secrets:
            job["has_secrets"] = True
        started = advance(job, {layer["index"]: layer for layer in layers}, node)
        return job, layers, tasks, started

    @staticmethod
    def _exists(job_id: str, given: bool) -> str:
        """Another post of the same id won (a schedule's tick fired twice, say): that is the job."""
        if given:
            return job_id
        raise Refused(f"job id {job_id} already exists")

    def _post_chunked(self, job: Value, layers: list[Value], tasks: list[list[Value]],
                      secrets: dict[str, str] | None) -> dict[str, int] | None:
        """Write a big job: tasks (all PENDING) in chunks, the first with a ``pending/<job>``
        marker, then the head in one transaction that deletes the marker, so the job appears whole
        or not at all. The first layers' tasks are queued after it (enqueue), so no node starts a
        task of a job nobody can see yet.

        Returns each task's revision by id, or None when the job key exists already (nothing of
        ours is removed: the keys are the other post's). If a write fails, removes what this post
        wrote (best effort; the sweeper's ``partial.collect`` finishes the job) and raises StoreError."""
        k, user, job_id = self.keys, job["user"], job["id"]
        exists = [absent(k.job(user, job_id))]
        marker = Put(k.pending(user, job_id), codec.pack({"user": user, "at": model.now()}))
        head = self._head_ops(job, layers, secrets) + [Delete(k.pending(user, job_id))]
        items = [Item(self._task_ops([[task]]), tag=task["id"]) for lt in tasks for task in lt]
        if not fits(head, exists):  # many layers: they go first too, invisible without the job key
            head = self._head_ops(job, None, secrets) + [Delete(k.pending(user, job_id))]
            items += [Item(self._layer_ops([layer])) for layer in layers]
        try:
            revs = self._write_chunks(exists, marker, list(fit(items, reserve_ops=1, reserve_compare=1,
                                                               reserve_bytes=op_size(marker) + 200)))
            if revs is None or not self._write_chunk(exists, head).succeeded:
                return None
        except Exception as exc:
            partial.remove(self, user, job_id)
            raise StoreError(f"job {job_id} could not be posted, and what was written of it is removed: "
                             f"{exc}") from exc
        return revs

    def _write_chunks(self, exists: list[Compare], marker: Put, groups: list[batch.Group]) -> dict[str, int] | None:
        """Write the chunks: the first (with the pending marker) alone, so the marker is in etcd
        before any other key of the job, then the rest several at a time (:meth:`Store.txn_many`:
        etcd commits those that arrive together with one fsync). Returns each task's revision by
        id, None if a chunk found the job key; raises what a write raised, once none is in flight."""
        revs: dict[str, int] = {}
        if not groups:  # nothing goes before the head (as the loop this replaced): no marker needed
            return revs
        first = self._write_chunk(exists, [marker] + groups[0].ops)
        results = [first] + (self._write_many(exists, [g.ops for g in groups[1:]]) if first.succeeded else [])
        if not all(res.succeeded for res in results):
            return None
        for group, res in zip(groups, results):
            revs.update((str(tag), res.revision) for tag in group.tags if tag is not None)
        return revs

    def _write_chunk(self, compare: list[Compare], ops: list[Op]) -> Any:
        """One transaction of a chunked post (a seam for tests that cut a post short)."""
        return self.store.txn(compare, ops)

    def _write_many(self, compare: list[Compare], chunks: list[list[Op]]) -> list[Any]:
        """Transactions of a chunked post sent together, results in order (a seam for tests)."""
        return self.store.txn_many([(compare, ops) for ops in chunks])

    def _task_ops(self, tasks: list[list[Value]]) -> list[Op]:
        ops: list[Op] = []
        for layer_tasks in tasks:
            for task in layer_tasks:
                user = task["user"]
                ops.append(Put(self.keys.task(user, task["id"]), codec.pack(task)))
                if task.get("paused_at"):
                    ops.append(Put(self.keys.paused(user, task["id"]), b""))
        return ops

    def _layer_ops(self, layers: list[Value]) -> list[Op]:
        k = self.keys
        ops: list[Op] = [Put(k.layer(layer["user"], layer["id"]), codec.pack(layer)) for layer in layers]
        return ops + [Put(k.paused(layer["user"], layer["id"]), b"") for layer in layers if layer.get("paused_at")]

    def _head_ops(self, job: Value, layers: list[Value] | None = None,
                  secrets: dict[str, str] | None = None) -> list[Op]:
        """The job key and its active marker, pause marker and sealed secrets (and the owner's
        account the first time a user posts without etcd auth); with ``layers``, the layers too.
        Written in one transaction, the job key last: the job appears whole."""
        k, user = self.keys, job["user"]
        ops: list[Op] = self._layer_ops(layers) if layers else []
        if job.get("paused_at"):
            ops.append(Put(k.paused(user, job["id"]), b""))
        if secrets:
            sealed = seal.seal_inputs(self.store, self.keys, secrets, user, job["id"])
            ops.append(Put(k.secrets(user, job["id"]), codec.pack(sealed)))
        ops += owners.register_ops(self.store, self.keys, user)
        if job["state"] in (states.PENDING, states.RUNNING):
            ops.append(Put(k.active(user, job["id"]), codec.pack({"user": user})))
        ops.append(Put(k.job(user, job["id"]), codec.pack(job)))  # last: the job appears whole
        return ops

    def _log_post(self, job: Value, layers: list[Value]) -> None:
        log.info("job %s %s posted by %s (%d layers, %d tasks)", job["id"], job["name"], job["user"],
                 len(layers), job["tasks"])
        for layer in layers:
            if layer["state"] != states.PENDING:
                log.info("layer %s %s %s", layer["id"], layer["name"], layer["state"])

    # ---- queueing a running layer --------------------------------------------------------------

    def enqueue(self, user: str, layer_id: str, known: list[tuple[Value, int]] | None = None,
                node: str | None = None) -> None:
        """Queue the tasks of a RUNNING layer, then mark the layer enqueued.

        Each PENDING task is rewritten QUEUED (its key is its queue entry), compared on the
        revision it was read at. Transactions are grouped to fit etcd's limits by count and bytes
        (:func:`batch.fit`), several in flight; a lost race lists the layer again. Staged tasks
        never committed are deleted first. Raises TooLarge only if one task alone cannot be
        queued (the spec limits rule that out)."""
        k = self.keys
        for _ in range(MAX_TRIES):
            found = self.load(k.layer(user, layer_id))
            if found is None:
                return
            layer, layer_kv = found
            if layer["state"] != states.RUNNING or layer.get("enqueued"):
                return
            pending, known = (known if known is not None else self._unqueued(user, layer)), None
            if not self._queue(user, pending, node):
                continue  # someone changed a task meanwhile: list what is still PENDING again
            res = self.store.txn([mod_is(layer_kv.key, layer_kv.mod_revision)],
                                 [Put(layer_kv.key, codec.pack({**layer, "enqueued": True}))])
            if res.succeeded:
                log.info("layer %s queued %d tasks", layer_id, layer["tasks"])
                return

    def _unqueued(self, user: str, layer: Value) -> list[tuple[Value, int]]:
        """The committed PENDING tasks of a layer (with their revisions); deletes on the way the
        staged tasks whose batch was never committed (their writer died or was refused)."""
        kvs, _ = self.store.scan(self.keys.task(user, layer["id"] + "."))
        values = [(codec.unpack(kv.value), kv) for kv in kvs]
        garbage = [Delete(kv.key) for v, kv in values if not model.committed(v, layer)]
        for group in batch.fit_ops(garbage):
            self.store.txn([], group)
        return [(v, kv.mod_revision) for v, kv in values
                if model.committed(v, layer) and v["state"] == states.PENDING]

    def _queue(self, user: str, pending: list[tuple[Value, int]], node: str | None) -> bool:
        """Queue tasks in transactions that fit, several in flight at once (each group is
        compared on its own tasks' revisions, so they are independent); False if any lost a race."""
        groups = list(batch.fit(self._queue_item(user, task, rev, node) for task, rev in pending))
        return all(res.succeeded for res in self.store.txn_many([(g.compare, g.ops) for g in groups]))

    def _queue_item(self, user: str, task: Value, rev: int, node: str | None) -> batch.Item:
        """One task's queueing: its QUEUED value, compared on the revision it was read at."""
        key = self.keys.task(user, task["id"])
        return batch.Item([Put(key, codec.pack(_queued(task, node)))], [mod_is(key, rev)])

    # ---- moving layers on ----------------------------------------------------------------------

    def settle(self, job_id: str, user: str | None = None, node: str | None = None,
               repair: bool = False) -> bool:
        """Finish drained layers and start the next ones; returns whether anything changed.

        Each round reads the job and its layers, plans (:func:`layerplan.plan`), and writes the plan
        in one transaction fenced by the revisions it read (see :meth:`_settle_txn`); a lost race reads
        again. Idempotent: any number of nodes may settle one job at once. With ``repair``, first
        finish queueing any running layer whose queueing was cut short."""
        user = user or self.owner(job_id)
        changed = False
        for _ in range(MAX_TRIES):
            snap = self._snapshot(user, job_id)
            if snap is None:
                return False
            if repair:
                repair = False
                if self._repair(user, snap, node):
                    continue
            outcome = self._settle_round(user, snap, node)
            if outcome is None:
                continue  # someone changed the job, a layer or a task: read again
            if not outcome:
                return changed
            if outcome == "ended":
                return True  # the job ended and its active key is gone: no layer is left to move
            changed = True  # and again: a started layer may have drained already, or the plan was capped
        log.warning("settle of job %s gave up after %d tries (heavy contention)", job_id, MAX_TRIES)
        return changed

    def _snapshot(self, user: str, job_id: str) -> _Snapshot | None:
        k = self.keys
        snap = self.store.read([Get(k.job(user, job_id)), Get.prefix(k.layer(user, job_id + ".")),
                                Get.prefix(k.count(user, job_id))])
        if not snap.responses[0].kvs:
            return None
        job_kv = snap.responses[0].kvs[0]
        layer_kvs = {kv.key: kv for kv in snap.responses[1].kvs}
        layers = {(v := codec.unpack(kv.value))["index"]: v for kv in layer_kvs.values()}
        counters = counts.total(kv.value for kv in snap.responses[2].kvs)
        return _Snapshot(job_kv, codec.unpack(job_kv.value), layer_kvs, layers, counters, snap.revision)

    def _repair(self, user: str, snap: _Snapshot, node: str | None) -> bool:
        """Queue the running layers whose queueing was cut short; whether there were any."""
        stuck = [layer["id"] for layer in snap.layers.values()
                 if layer["state"] == states.RUNNING and not layer.get("enqueued")]
        for layer_id in stuck:
            self.enqueue(user, layer_id, node=node)
        return bool(stuck)

    def _settle_round(self, user: str, snap: _Snapshot, node: str | None) -> bool | str | None:
        """Plan and write once: False if there was nothing to do, None if the write lost a race,
        "ended" if the write ended the job for good (its active key deleted: no compensation to
        run), True otherwise."""
        watched = [snap.layers[i] for i in layerplan.watched(snap.layers)]
        counts = _counts(snap, watched)
        planned = self._fitting_plan(user, snap, counts, node)
        if planned is None:
            return False
        p, (compare, ops, inlined) = planned
        if not self.store.txn(compare, ops).succeeded:
            return None
        self._after_settle(user, p, inlined, node)
        ended = p.active == "delete" and all(s["state"] in states.FINAL for s in p.job.get("layers", []))
        return "ended" if ended else True

    def _fitting_plan(self, user: str, snap: _Snapshot, counts: dict[str, layerplan.LayerCounts],
                      node: str | None) -> tuple[layerplan.Plan, _SettleTxn] | None:
        """The plan for this snapshot, capped to as many layers as one transaction can carry, with
        that transaction; None if there is nothing to do. Raises TooLarge if even one layer's move
        does not fit (a job value near etcd's limit)."""
        for limit in SETTLE_LIMITS:
            p = layerplan.plan(snap.job, snap.layers, counts, node, model.now(), limit)
            if p.empty:
                return None
            txn = self._settle_txn(user, snap, p, node)
            if txn is not None:
                return p, txn
        raise batch.TooLarge(f"job {snap.job['id']}: moving one layer does not fit in an etcd request")

    def _settle_txn(self, user: str, snap: _Snapshot, p: layerplan.Plan, node: str | None) -> _SettleTxn | None:
        """The transaction that writes plan ``p``, or None if it does not fit in one request.

        Compares: the job's revision; each drained layer's tasks unchanged since the counts that
        found it drained were read (``p.counted``: every task's mod revision at most that); each
        written layer's revision; each inlined task's revision. Ops: inlined tasks (QUEUED), deletes
        of uncommitted staged tasks, the moved layers, the outbox entries, the active key, and the
        job value last."""
        k = self.keys
        compare = [mod_is(snap.job_kv.key, snap.job_kv.mod_revision)]
        for i in p.drained:
            tasks = k.task(user, p.layers[i]["id"] + ".")
            compare.append(Compare(tasks, "mod", "<", p.counted + 1, prefix_end(tasks)))
        layer_keys = {i: k.layer(user, layer["id"]) for i, layer in p.layers.items()}
        compare += [mod_is(key, snap.layer_kvs[key].mod_revision) for key in layer_keys.values()]
        tail = self._messages(p) + self._active_ops(user, p) + [Put(snap.job_kv.key, codec.pack(p.job))]
        head = [Put(layer_keys[i], codec.pack(layer)) for i, layer in p.layers.items()]
        if not batch.fits(head + tail, compare):
            return None
        inline = self._inline(user, p, head + tail, compare, node)
        head = [Put(layer_keys[i], codec.pack({**layer, "enqueued": True} if i in inline else layer))
                for i, layer in p.layers.items()]
        ops = [op for item in inline.values() for op in item.ops] + head + tail
        compare += [c for item in inline.values() for c in item.compare]
        return (compare, ops, set(inline)) if batch.fits(ops, compare) else None

    def _inline(self, user: str, p: layerplan.Plan, ops: list[Op], compare: list[Compare],
                node: str | None) -> dict[int, batch.Item]:
        """The started layers whose queueing fits in the settle transaction, each whole: its
        committed PENDING tasks (rewritten QUEUED) and the deletes of its uncommitted staged
        tasks. Only small layers are read at all (INLINE_TASKS in all); the rest go to enqueue."""
        chosen: dict[int, batch.Item] = {}
        budget = INLINE_TASKS
        for t in p.started:
            layer = p.layers[t.index]
            if layer["tasks"] > budget:
                continue
            item = self._inline_item(user, layer, node)
            if not batch.fits([*ops, *item.ops], [*compare, *item.compare]):
                continue  # bulky tasks: enqueue writes them in as many transactions as they need
            chosen[t.index] = item
            ops, compare = [*ops, *item.ops], [*compare, *item.compare]
            budget -= layer["tasks"]
        return chosen

    def _inline_item(self, user: str, layer: Value, node: str | None) -> batch.Item:
        kvs, _ = self.store.scan(self.keys.task(user, layer["id"] + "."))
        ops: list[Op] = []
        compare: list[Compare] = []
        for kv in kvs:
            task = codec.unpack(kv.value)
            if not model.committed(task, layer):
                ops.append(Delete(kv.key))  # a batch whose writer died or was refused: never queued
            elif task["state"] == states.PENDING:
                item = self._queue_item(user, task, kv.mod_revision, node)
                ops += item.ops
                compare += item.compare
        return batch.Item(ops, compare)

    def _active_ops(self, user: str, p: layerplan.Plan) -> list[Op]:
        key = self.keys.active(user, p.job["id"])
        if p.active == "delete":
            return [Delete(key)]
        return [Put(key, codec.pack({"user": user}))] if p.active == "put" else []

    def _after_settle(self, user: str, p: layerplan.Plan, inlined: set[int], node: str | None) -> None:
        """Once a plan is written: log each move, send its messages, queue the layers not inlined."""
        for t in (*p.ended, *p.started):
            layer = p.layers[t.index]
            log.info("layer %s %s %s", layer["id"], layer["name"], t.state)
        if p.job_reason:
            log.info("job %s %s %s", p.job["id"], p.job["name"], p.job["state"])
        if p.compensation:  # compensation.py: its state beside the job's
            log.info("job %s %s compensation %s: %s", p.job["id"], p.job["name"], p.compensation,
                     p.job["compensation"]["reason"])
        if p.messages:
            from . import messages

            messages.deliver(self, user, p.job["id"] + "/")
        for t in p.started:
            if t.index not in inlined:
                self.enqueue(user, p.layers[t.index]["id"], node=node)

    def _messages(self, p: layerplan.Plan) -> list[Op]:
        """Outbox entries for the on_success / on_failure messages of what the plan ends."""
        from . import messages

        ops: list[Op] = []
        for m in p.messages:
            ops += messages.outbox_ops(self, p.job, list(m.names), m.outcome, m.what)
        return ops

@dataclass(frozen=True)
class _Snapshot:
    """A job, its layers and its counts as read together (at ``revision``), with the keys whose
    revisions fence the write."""

    job_kv: KV
    job: Value
    layer_kvs: dict[str, KV]
    layers: dict[int, Value]
    counters: counts.Delta
    revision: int


def _counts(snap: _Snapshot, layers: list[Value]) -> dict[str, layerplan.LayerCounts]:
    """(not yet run, running or orphaned, errored) per layer, from the job's counter keys
    (conductor/counts.py) read with the job: each count carries that snapshot's revision, and the
    settle compares that the drained layers' tasks did not change since."""
    out: dict[str, layerplan.LayerCounts] = {}
    for layer in layers:
        per = counts.of_layer(snap.counters, layer["id"])
        running = per.pop(states.RUNNING)
        left = max(0, int(layer.get("tasks") or 0) - running - sum(per.values()))
        out[layer["id"]] = layerplan.LayerCounts(left, running, per[states.ERRORED], snap.revision)
    return out


def _queued(task: Value, node: str | None) -> Value:
    """A copy of a PENDING task as its started layer queues it."""
    return model.move(_own_copy(task), states.QUEUED, "its layer started", node)


def _compact(task: Value) -> Value:
    """``task`` without the fields that hold their UNSTORED_DEFAULTS."""
    return {name: value for name, value in task.items()
            if name not in UNSTORED_DEFAULTS or value != UNSTORED_DEFAULTS[name]}


def _own_copy(value: Value) -> Value:
    """A copy model.move may change (it appends a record) without touching the value read."""
    return {**value, "records": list(value.get("records", []))}


def advance(job: Value, layers: dict[int, Value], node: str | None = None,
            emptied: list[int] | None = None) -> list[int]:
    """Start every layer that may start now (see :func:`layerplan.plan`), applied to the values
    in place: for a job being posted, which writes them itself. Returns the indices of layers set
    RUNNING and appends those that ended at once (empty or flagged) to ``emptied``."""
    p = layerplan.plan(job, layers, {}, node, model.now())
    job.clear()
    job.update(p.job)
    for i, layer in p.layers.items():
        layers[i].clear()
        layers[i].update(layer)
    if emptied is not None:
        emptied += [t.index for t in p.ended]
    return [t.index for t in p.started]
