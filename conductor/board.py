"""Posting jobs and moving layers on: the writes that any client or node may make.

Atomicity, per method:

* :meth:`Board.post` writes a job that fits one request (by count and bytes, see
  :mod:`conductor.batch`) in one transaction. Tasks are written as chunk keys of specs
  (:mod:`conductor.chunks`), not a key each. A bigger job is written as its chunks first (the
  first also writes ``pending/<job>`` and is written alone, before any other; the rest go several
  at a time, see :meth:`Store.txn_many`, and all have ended before the head is sent), then its
  head (job, layers, active and pause markers, secrets; the layers go with the chunks when there
  are too many for one request) in one transaction that deletes the pending marker, so a visible
  job is always a complete job. Nodes claim nothing of a job whose key they have not seen. A
  failed chunk makes post remove what it wrote; a poster killed mid-way leaves a pending marker
  for :func:`conductor.partial.collect`.
* :meth:`Board.settle` is idempotent and safe to run from any number of nodes at once: it writes
  the plan of :func:`layerplan.plan` (which layers end, which start, the job's state) in one
  transaction, guarded by the revisions of the job and of every layer it writes and by compares
  that no task of a drained layer changed since the counts that found it drained were read (a
  range compare over the layer's task keys). It is how layer order (invariant 3) is kept.
  Starting a layer is that one write: its tasks are claimable from then on.

Every multi-key write here is sized with :mod:`conductor.batch`, by count and by bytes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import batch, chunks, codec, counts, footprint, ids, layerplan, model, owners, partial, seal, states
from .batch import Item, fit, fits, op_size
from .errors import Refused, StoreError
from .keys import Keys
from .model import Value
from .keys import prefix_end
from .ops import KV, Compare, Delete, Get, Op, Put, absent, mod_is
from .store import Store

log = logging.getLogger("conductor.board")

SETTLE_LIMITS = (48, 24, 12, 6, 3, 1)  # layers moved per settle txn, tried in turn until the txn fits
MAX_TRIES = 50

UNSTORED_DEFAULTS = chunks.UNSTORED_DEFAULTS  # where views and others look for them

_SettleTxn = tuple[list[Compare], list[Op]]  # compares, ops


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

    def load_task(self, user: str, task_id: str) -> tuple[Value, KV] | None:
        """A task's value and key; for a task without a key yet, what its chunk gives (state from
        its layer) with a KV of revision 0 (a write compared on it creates the key). None if there
        is no such task. One read."""
        k = self.keys
        layer_id, _, tail = task_id.rpartition(".")
        if not tail.isdigit():
            return None
        number = int(tail)
        snap = self.store.read([Get(k.task(user, task_id)), Get(k.layer(user, layer_id)),
                                Get(k.chunk(user, layer_id, 0), k.chunk(user, layer_id, number + 1),
                                    limit=1, descending=True)])
        task_r, layer_r, chunk_r = snap.responses
        if task_r.kvs:
            return codec.unpack(task_r.kvs[0].value), task_r.kvs[0]
        if not layer_r.kvs or not chunk_r.kvs:
            return None
        layer = codec.unpack(layer_r.kvs[0].value)
        first, specs, token = chunks.read(chunk_r.kvs[0].value)
        if number >= first + len(specs) or not chunks.committed(token, layer):
            return None
        task = chunks.task_of(layer, number, specs[number - first], chunks.state_in(layer))
        return task, KV(k.task(user, task_id), b"", 0, 0, 0)

    def layer_tasks(self, user: str, layer: Value) -> dict[int, tuple[Value, KV]]:
        """Every task of a layer by number: its key's value, or what its committed chunk gives
        (with a KV of revision 0). Reads every chunk and task key of the layer."""
        k = self.keys
        raw = [kv.value for kv in self.store.iter_prefix(k.chunk(user, layer["id"]))]
        out = {n: (task, KV(k.task(user, task["id"]), b"", 0, 0, 0))
               for n, task in chunks.tasks_of(layer, raw, chunks.state_in(layer)).items()}
        for kv in self.store.iter_prefix(k.task(user, layer["id"] + ".")):
            task = codec.unpack(kv.value)
            if model.committed(task, layer):
                out[chunks.number_of(task["id"])] = (task, kv)
        return dict(sorted(out.items()))

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
        job, layers, tasks = self._values(spec, user, job_id, source, meta, bool(secrets), node)
        body = self._chunk_ops(layers, tasks)
        whole = body + self._head_ops(job, layers, secrets)
        exists = [absent(self.keys.job(user, job_id))]
        if fits(whole, exists):
            if not self.store.txn(exists, whole).succeeded:
                return self._exists(job_id, given)
        elif not self._post_chunked(job, layers, body, secrets):
            return self._exists(job_id, given)
        self._log_post(job, layers)
        return job_id

    @staticmethod
    def _values(spec: dict[str, Any], user: str, job_id: str, source: dict[str, Any] | None,
                meta: dict[str, Any] | None, secrets: bool,
                node: str | None) -> tuple[Value, list[Value], list[list[Value]]]:
        """The values a post writes (tasks as they would be stored, for their chunks), checked
        against the stored-size caps (raises InvalidSpec), with the layers that start at once
        RUNNING."""
        spec = {**spec, "on_success": (meta or {}).get("on_success", []),
                "on_failure": (meta or {}).get("on_failure", [])}
        job, layers, tasks = footprint.build(spec, user, job_id, source or {"kind": "api"})
        footprint.check(job, layers, tasks)  # as spec.check_stored (conductor check) does
        if secrets:
            job["has_secrets"] = True
        advance(job, {layer["index"]: layer for layer in layers}, node)
        return job, layers, tasks

    @staticmethod
    def _exists(job_id: str, given: bool) -> str:
        """Another post of the same id won (a schedule's tick fired twice, say): that is the job."""
        if given:
            return job_id
        raise Refused(f"job id {job_id} already exists")

    def _post_chunked(self, job: Value, layers: list[Value], body: list[Op], secrets: dict[str, str] | None) -> bool:
        """Write a big job: its chunks (``body``) in transactions that fit, the first with a
        ``pending/<job>`` marker, then the head in one transaction that deletes the marker, so the
        job appears whole or not at all.

        False when the job key exists already (nothing of ours is removed: the keys are the other
        post's). If a write fails, removes what this post wrote (best effort; the sweeper's
        ``partial.collect`` finishes the job) and raises StoreError."""
        k, user, job_id = self.keys, job["user"], job["id"]
        exists = [absent(k.job(user, job_id))]
        marker = Put(k.pending(user, job_id), codec.pack({"user": user, "at": model.now()}))
        head = self._head_ops(job, layers, secrets) + [Delete(k.pending(user, job_id))]
        items = [Item([op]) for op in body]
        if not fits(head, exists):  # many layers: they go first too, invisible without the job key
            head = self._head_ops(job, None, secrets) + [Delete(k.pending(user, job_id))]
            items += [Item(self._layer_ops([layer])) for layer in layers]
        try:
            groups = list(fit(items, reserve_ops=1, reserve_compare=1, reserve_bytes=op_size(marker) + 200))
            return self._write_chunks(exists, marker, groups) and self._write_chunk(exists, head).succeeded
        except Exception as exc:
            partial.remove(self, user, job_id)
            raise StoreError(f"job {job_id} could not be posted, and what was written of it is removed: "
                             f"{exc}") from exc

    def _write_chunks(self, exists: list[Compare], marker: Put, groups: list[batch.Group]) -> bool:
        """Write the chunks: the first (with the pending marker) alone, so the marker is in etcd
        before any other key of the job, then the rest several at a time (:meth:`Store.txn_many`:
        etcd commits those that arrive together with one fsync). False if a chunk found the job
        key; raises what a write raised, once none is in flight."""
        if not groups:  # nothing goes before the head: no marker needed
            return True
        first = self._write_chunk(exists, [marker] + groups[0].ops)
        results = [first] + (self._write_many(exists, [g.ops for g in groups[1:]]) if first.succeeded else [])
        return all(res.succeeded for res in results)

    def _write_chunk(self, compare: list[Compare], ops: list[Op]) -> Any:
        """One transaction of a chunked post (a seam for tests that cut a post short)."""
        return self.store.txn(compare, ops)

    def _write_many(self, compare: list[Compare], chunks: list[list[Op]]) -> list[Any]:
        """Transactions of a chunked post sent together, results in order (a seam for tests)."""
        return self.store.txn_many([(compare, ops) for ops in chunks])

    def _chunk_ops(self, layers: list[Value], tasks: list[list[Value]]) -> list[Op]:
        """Each layer's tasks as chunk keys (conductor/chunks.py), and the pause markers of paused tasks."""
        ops: list[Op] = []
        for layer, layer_tasks in zip(layers, tasks):
            user = layer["user"]
            specs = [chunks.spec_of(task, n) for n, task in enumerate(layer_tasks)]
            ops += [Put(self.keys.chunk(user, layer["id"], first), chunks.value(first, part))
                    for first, part in chunks.cut(specs)]
            ops += [Put(self.keys.paused(user, task["id"]), b"") for task in layer_tasks if task.get("paused_at")]
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

    # ---- moving layers on ----------------------------------------------------------------------

    def settle(self, job_id: str, user: str | None = None, node: str | None = None) -> bool:
        """Finish drained layers and start the next ones; returns whether anything changed.

        Each round reads the job, its layers and its counts, plans (:func:`layerplan.plan`), and
        writes the plan in one transaction fenced by the revisions it read (see :meth:`_settle_txn`);
        a lost race reads again. Idempotent: any number of nodes may settle one job at once."""
        user = user or self.owner(job_id)
        changed = False
        for _ in range(MAX_TRIES):
            snap = self._snapshot(user, job_id)
            if snap is None:
                return False
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

    def _settle_round(self, user: str, snap: _Snapshot, node: str | None) -> bool | str | None:
        """Plan and write once: False if there was nothing to do, None if the write lost a race,
        "ended" if the write ended the job for good (its active key deleted: no compensation to
        run), True otherwise."""
        watched = [snap.layers[i] for i in layerplan.watched(snap.layers)]
        counts = _counts(snap, watched)
        planned = self._fitting_plan(user, snap, counts, node)
        if planned is None:
            return False
        p, (compare, ops) = planned
        if not self.store.txn(compare, ops).succeeded:
            return None
        self._after_settle(user, p)
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
            txn = self._settle_txn(user, snap, p)
            if txn is not None:
                return p, txn
        raise batch.TooLarge(f"job {snap.job['id']}: moving one layer does not fit in an etcd request")

    def _settle_txn(self, user: str, snap: _Snapshot, p: layerplan.Plan) -> _SettleTxn | None:
        """The transaction that writes plan ``p``, or None if it does not fit in one request.

        Compares: the job's revision; each drained layer's task keys unchanged (none created
        either) since the counts that found it drained were read (``p.counted``: every task key's
        mod revision at most that); each written layer's revision. Ops: the moved layers (a started
        one's tasks are claimable from this revision on), the outbox entries, the active key, and
        the job value last."""
        k = self.keys
        compare = [mod_is(snap.job_kv.key, snap.job_kv.mod_revision)]
        for i in p.drained:
            tasks = k.task(user, p.layers[i]["id"] + ".")
            compare.append(Compare(tasks, "mod", "<", p.counted + 1, prefix_end(tasks)))
        layer_keys = {i: k.layer(user, layer["id"]) for i, layer in p.layers.items()}
        compare += [mod_is(key, snap.layer_kvs[key].mod_revision) for key in layer_keys.values()]
        tail = self._messages(p) + self._active_ops(user, p) + [Put(snap.job_kv.key, codec.pack(p.job))]
        ops = [Put(layer_keys[i], codec.pack(layer)) for i, layer in p.layers.items()] + tail
        if not batch.fits(ops, compare):
            return None
        changed = self._keyed_pending(user, p)
        if changed.ops and batch.fits(ops + list(changed.ops), compare + list(changed.compare)):
            return compare + list(changed.compare), list(changed.ops) + ops
        return compare, ops

    def _keyed_pending(self, user: str, p: layerplan.Plan) -> batch.Item:
        """The task keys of the layers ``p`` starts that are PENDING (tasks a user changed before
        their layer started: a pause, an env), rewritten QUEUED, compared on their revisions. Only
        such tasks have keys before their layer starts, so this is a short read. Left out when they
        do not fit the settle's transaction: a node claims a PENDING task key of a running layer
        all the same (conductor/queued.py)."""
        ops: list[Op] = []
        compare: list[Compare] = []
        for t in p.started:
            layer = p.layers[t.index]
            for kv in self.store.iter_prefix(self.keys.task(user, layer["id"] + ".")):
                task = codec.unpack(kv.value)
                if task.get("state") == states.PENDING and model.committed(task, layer):
                    moved = model.move({**task, "records": list(task.get("records", []))}, states.QUEUED,
                                       chunks.STARTED, None, layer.get("started"))
                    ops.append(Put(kv.key, codec.pack(moved)))
                    compare.append(mod_is(kv.key, kv.mod_revision))
        return batch.Item(ops, compare)

    def _active_ops(self, user: str, p: layerplan.Plan) -> list[Op]:
        key = self.keys.active(user, p.job["id"])
        if p.active == "delete":
            return [Delete(key)]
        return [Put(key, codec.pack({"user": user}))] if p.active == "put" else []

    def _after_settle(self, user: str, p: layerplan.Plan) -> None:
        """Once a plan is written: log each move, send its messages."""
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
