"""Posting jobs and moving layers on: the writes that any client or node may make.

Atomicity, per method:

* :meth:`Board.post` writes a job that fits one request (by count and bytes, see
  :mod:`conductor.batch`) in one transaction. A bigger job is written as chunks of tasks first
  (the first chunk also writes ``pending/<job>``), then its head (job, layers, index, active,
  pause markers, secrets; the layers go with the tasks when there are too many for one request)
  in one transaction that deletes the pending marker, so a visible job is always a complete job.
  A failed chunk makes post remove what it wrote; a poster killed mid-way leaves a pending marker
  for :func:`conductor.partial.collect`. The first layers are then queued by :meth:`Board.enqueue`.
* :meth:`Board.settle` is idempotent and safe to run from any number of nodes at once: one
  transaction finishes every drained layer of a job and starts the layers that may now start,
  guarded by the job's revision and by compares that no task of a finishing layer is ready or
  claimed. It is how layer order (invariant 3) is kept.
* :meth:`Board.enqueue` queues a running layer's tasks in chunks (a task and its ready marker in
  the same transaction), then marks the layer ``enqueued``; a layer is never finished before that.
"""
from __future__ import annotations

import logging
from typing import Any

from . import codec, footprint, ids, model, partial, states
from .batch import Item, fit, fits, op_size
from .errors import NotFound, Refused, StoreError
from .keys import Keys
from .model import Value
from .ops import KV, Compare, Delete, Get, Op, Put, absent, mod_is, range_empty
from .store import MAX_TXN_OPS, Store

log = logging.getLogger("conductor.board")

INLINE_TASKS = 40  # starting layers with at most this many tasks in all are queued in the same txn
MAX_FINISH = 24  # layers finished in one settle transaction (three range compares each)
CHUNK_TASKS = 60  # tasks queued per transaction (two ops each)
MAX_TRIES = 50


class Board:
    """Reads and writes of jobs, layers and tasks through one :class:`Store`."""

    def __init__(self, store: Store, keys: Keys):
        self.store = store
        self.keys = keys

    # ---- lookups -----------------------------------------------------------------------------

    def owner(self, job_id: str) -> str:
        """The user who owns a job; raises NotFound."""
        kv = self.store.get(self.keys.index(job_id))
        if kv is None:
            raise NotFound(f"no job {job_id}")
        return codec.unpack(kv.value)["user"]

    def resolve_job(self, prefix: str) -> str:
        """A job id from a unique prefix of one (ids are long; people type the start)."""
        from .errors import Ambiguous

        res = self.store.range(self.keys.index(prefix), self.keys.index(prefix[:-1] + chr(ord(prefix[-1]) + 1)),
                               limit=2, keys_only=True) if prefix else None
        if res is None or not res.kvs:
            raise NotFound(f"no job {prefix}")
        if len(res.kvs) > 1:
            raise Ambiguous(f"{prefix} matches more than one job; give more of the id")
        return res.kvs[0].key.rsplit("/", 1)[1]

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
        if job_id and self.store.get(self.keys.index(job_id)) is not None:
            return job_id
        given = job_id is not None
        job_id = job_id or ids.new_job_id()
        job, layers, tasks, started = self._values(spec, user, job_id, source, meta, bool(secrets), node)
        whole = self._task_ops(tasks, ready=True) + self._head_ops(job, layers, secrets)
        exists = [absent(self.keys.job(user, job_id))]
        if fits(whole, exists):
            if not self.store.txn(exists, whole).succeeded:
                return self._exists(job_id, given)
            self._log_post(job, layers)
            return job_id
        for i in started:
            layers[i]["enqueued"] = False  # queued after the head: see _post_chunked
        revs = self._post_chunked(job, layers, tasks, secrets)
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
        with the layers that start at once RUNNING and their tasks QUEUED; and those layers."""
        spec = {**spec, "on_success": (meta or {}).get("on_success", []),
                "on_failure": (meta or {}).get("on_failure", [])}
        job, layers, tasks = footprint.build(spec, user, job_id, source or {"kind": "api"})
        footprint.check(job, layers, tasks)  # as spec.check_stored (conductor check) does
        if secrets:
            job["has_secrets"] = True
        started = advance(job, {layer["index"]: layer for layer in layers}, node)
        for i in started:
            for task in tasks[i]:
                model.move(task, states.QUEUED, "its layer started", node)
            layers[i]["enqueued"] = True
        return job, layers, tasks, started

    @staticmethod
    def _exists(job_id: str, given: bool) -> str:
        """Another post of the same id won (a schedule's tick fired twice, say): that is the job."""
        if given:
            return job_id
        raise Refused(f"job id {job_id} already exists")

    def _post_chunked(self, job: Value, layers: list[Value], tasks: list[list[Value]],
                      secrets: dict[str, str] | None) -> dict[str, int] | None:
        """Write a big job: tasks (the first layers' already QUEUED, without ready markers) in
        chunks, the first with a ``pending/<job>`` marker, then the head in one transaction that
        deletes the marker, so the job appears whole or not at all. The ready markers come later
        (enqueue), so no node starts a task of a job nobody can see yet.

        Returns each task's revision by id, or None when the job key exists already (nothing of
        ours is removed: the keys are the other post's). If a write fails, removes what this post
        wrote (best effort; the sweeper's ``partial.collect`` finishes the job) and raises StoreError."""
        k, user, job_id = self.keys, job["user"], job["id"]
        exists = [absent(k.job(user, job_id))]
        marker = Put(k.pending(job_id), codec.pack({"user": user, "at": model.now()}))
        head = self._head_ops(job, layers, secrets) + [Delete(k.pending(job_id))]
        items = [Item(self._task_ops([[task]], ready=False), tag=task["id"]) for lt in tasks for task in lt]
        if not fits(head, exists):  # many layers: they go first too, invisible without the job key
            head = self._head_ops(job, None, secrets) + [Delete(k.pending(job_id))]
            items += [Item(self._layer_ops([layer])) for layer in layers]
        revs: dict[str, int] = {}
        try:
            groups = fit(items, reserve_ops=1, reserve_compare=1, reserve_bytes=op_size(marker) + 200)
            for n, group in enumerate(groups):
                res = self._write_chunk(exists, ([marker] if n == 0 else []) + group.ops)
                if not res.succeeded:
                    return None
                revs.update((str(tag), res.revision) for tag in group.tags if tag is not None)
            if not self._write_chunk(exists, head).succeeded:
                return None
        except Exception as exc:
            partial.remove(self, user, job_id)
            raise StoreError(f"job {job_id} could not be posted, and what was written of it is removed: "
                             f"{exc}") from exc
        return revs

    def _write_chunk(self, compare: list[Compare], ops: list[Op]) -> Any:
        """One transaction of a chunked post (a seam for tests that cut a post short)."""
        return self.store.txn(compare, ops)

    def _task_ops(self, tasks: list[list[Value]], ready: bool) -> list[Op]:
        ops: list[Op] = []
        for layer_tasks in tasks:
            for task in layer_tasks:
                data = codec.pack(task)
                ops.append(Put(self.keys.task(task["user"], task["id"]), data))
                if ready and task["state"] == states.QUEUED:
                    ops.append(Put(self.keys.ready(task["id"]), data))
                if task.get("paused_at"):
                    ops.append(Put(self.keys.paused(task["id"]), b""))
        return ops

    def _layer_ops(self, layers: list[Value]) -> list[Op]:
        k = self.keys
        ops: list[Op] = [Put(k.layer(layer["user"], layer["id"]), codec.pack(layer)) for layer in layers]
        return ops + [Put(k.paused(layer["id"]), b"") for layer in layers if layer.get("paused_at")]

    def _head_ops(self, job: Value, layers: list[Value] | None = None,
                  secrets: dict[str, str] | None = None) -> list[Op]:
        """The job key and its index, active marker, pause marker and secrets; with ``layers``,
        the layers too. Written in one transaction, the job key last: the job appears whole."""
        k, user = self.keys, job["user"]
        ops: list[Op] = self._layer_ops(layers) if layers else []
        if job.get("paused_at"):
            ops.append(Put(k.paused(job["id"]), b""))
        if secrets:
            ops.append(Put(k.secrets(user, job["id"]), codec.pack(secrets)))
        ops.append(Put(k.index(job["id"]), codec.pack({"user": user})))
        if job["state"] in (states.PENDING, states.RUNNING):
            ops.append(Put(k.active(job["id"]), codec.pack({"user": user})))
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

        A PENDING task is rewritten as QUEUED together with its ready marker (whose value is the
        same bytes). A task already written QUEUED (a job's first layer, posted in chunks) gets only
        its ready marker, which then names the task's revision (``task_rev``) for the claim's compare."""
        k = self.keys
        for _ in range(MAX_TRIES):
            found = self.load(k.layer(user, layer_id))
            if found is None:
                return
            layer, layer_kv = found
            if layer["state"] != states.RUNNING or layer.get("enqueued"):
                return
            if known is None:
                kvs, _ = self.store.scan(k.task(user, layer_id + "."))
                marked = {kv.key[len(k.ready()):] for kv in self.store.scan(k.ready(layer_id + "."), keys_only=True)[0]}
                values = [(codec.unpack(kv.value), kv) for kv in kvs]
                garbage = [kv.key for v, kv in values if not model.committed(v, layer)]
                for start in range(0, len(garbage), MAX_TXN_OPS - 8):  # batches whose writer died
                    self.store.txn([], [Delete(key) for key in garbage[start:start + MAX_TXN_OPS - 8]])
                pending = [(v, kv.mod_revision) for v, kv in values if model.committed(v, layer) and (
                           v["state"] == states.PENDING or (v["state"] == states.QUEUED and v["id"] not in marked))]
            else:
                pending, known = known, None
            clean = True
            for start in range(0, len(pending), CHUNK_TASKS):
                chunk = pending[start:start + CHUNK_TASKS]
                ops: list[Op] = []
                compare: list[Compare] = []
                for task, rev in chunk:
                    key = k.task(user, task["id"])
                    compare.append(mod_is(key, rev))
                    if task["state"] == states.PENDING:
                        model.move(task, states.QUEUED, "its layer started", node)
                        data = codec.pack(task)
                        ops += [Put(key, data), Put(k.ready(task["id"]), data)]
                    else:
                        ops.append(Put(k.ready(task["id"]), codec.pack({**task, "task_rev": rev})))
                        compare.append(absent(k.ready(task["id"])))
                res = self.store.txn(compare, ops)
                clean = clean and res.succeeded
            if not clean:
                continue  # someone changed a task meanwhile: list what is still PENDING again
            layer["enqueued"] = True
            res = self.store.txn([mod_is(layer_kv.key, layer_kv.mod_revision)],
                                 [Put(layer_kv.key, codec.pack(layer))])
            if res.succeeded:
                log.info("layer %s queued %d tasks", layer_id, layer["tasks"])
                return

    # ---- moving layers on ----------------------------------------------------------------------

    def settle(self, job_id: str, user: str | None = None, node: str | None = None,
               repair: bool = False) -> bool:
        """Finish drained layers and start the next ones; returns whether anything changed.

        With ``repair``, also finish queueing any running layer whose queueing was cut short."""
        k = self.keys
        user = user or self.owner(job_id)
        changed = False
        for _ in range(MAX_TRIES):
            snap = self.store.read([Get(k.job(user, job_id)), Get.prefix(k.layer(user, job_id + "."))])
            if not snap.responses[0].kvs:
                return False
            job_kv = snap.responses[0].kvs[0]
            job = codec.unpack(job_kv.value)
            layer_kvs = {kv.key: kv for kv in snap.responses[1].kvs}
            layers = {(v := codec.unpack(kv.value))["index"]: v for kv in layer_kvs.values()}
            running = [i for i, layer in layers.items() if layer["state"] == states.RUNNING]
            # an ERRORED layer is looked at again: skipping its errored tasks lets it complete
            running += [i for i, layer in layers.items() if layer["state"] == states.ERRORED
                        and not layer.get("killed_at") and layer.get("enqueued")]
            if repair:
                repair = False
                stuck = [layers[i]["id"] for i in running if not layers[i].get("enqueued")]
                for lid in stuck:
                    self.enqueue(user, lid, node=node)
                if stuck:
                    continue
            counts = self._counts(user, job_id, [layers[i]["id"] for i in running])
            finished: list[int] = []
            for i in running[:MAX_FINISH]:  # the rest in the next round: a txn has 128 compares at most
                layer = layers[i]
                ready, claimed, errored = counts[layer["id"]]
                if layer.get("enqueued") and ready == 0 and claimed == 0:  # claimed counts run markers too
                    outcome = states.layer_outcome(errored, layer["on_error"], bool(layer.get("killed_at")),
                                                   bool(layer.get("skipped_at")))
                    if outcome == layer["state"]:
                        continue
                    why = ("killed by a user" if layer.get("killed_at") else "skipped by a user"
                           if layer.get("skipped_at") else f"{errored} task(s) errored"
                           if outcome == states.ERRORED else
                           "every task is done" + (f" ({errored} errored, policy continue)" if errored else ""))
                    model.move(layer, outcome, why, node)
                    layer["ended"] = model.now()
                    finished.append(i)
            for s in job["layers"]:
                layer = layers[int(s["id"].rsplit(".", 1)[1])]
                s["state"] = layer["state"]
                if layer.get("killed_at"):
                    s["killed"] = True
            emptied: list[int] = []
            started = advance(job, layers, node, emptied)
            finished += emptied
            if not finished and not started and job["state"] == codec.unpack(job_kv.value)["state"]:
                return changed
            compare = [mod_is(job_kv.key, job_kv.mod_revision)]
            ops: list[Op] = []
            for i in finished:
                if i in emptied:
                    continue
                lid = layers[i]["id"]
                compare += [range_empty(k.ready(lid + ".")), range_empty(k.claim(lid + ".")),
                            range_empty(k.run(lid + "."))]
            inline: dict[int, list[tuple[Value, KV]]] = {}
            budget = INLINE_TASKS  # across every starting layer, so the txn stays under 128 ops
            for i in started:
                if layers[i]["tasks"] <= budget:
                    kvs, _ = self.store.scan(k.task(user, layers[i]["id"] + "."))
                    if len(kvs) > layers[i]["tasks"]:
                        continue  # a batch never committed is in it: enqueue() removes it
                    inline[i] = [(v, kv) for kv in kvs if (v := codec.unpack(kv.value))["state"] == states.PENDING]
                    budget -= len(inline[i])
            for i, pairs in inline.items():
                layers[i]["enqueued"] = True
                for task, kv in pairs:
                    model.move(task, states.QUEUED, "its layer started", node)
                    data = codec.pack(task)
                    compare.append(mod_is(kv.key, kv.mod_revision))
                    ops += [Put(kv.key, data), Put(k.ready(task["id"]), data)]
            for i in set(finished) | set(started):
                key = k.layer(user, layers[i]["id"])
                compare.append(mod_is(key, layer_kvs[key].mod_revision))
                ops.append(Put(key, codec.pack(layers[i])))
            ops += self._messages(job, codec.unpack(job_kv.value)["state"], [layers[i] for i in finished])
            if job["state"] not in (states.PENDING, states.RUNNING):
                ops.append(Delete(k.active(job_id)))
            elif codec.unpack(job_kv.value)["state"] not in (states.PENDING, states.RUNNING):
                ops.append(Put(k.active(job_id), codec.pack({"user": user})))
            ops.append(Put(job_kv.key, codec.pack(job)))
            res = self.store.txn(compare, ops)
            if not res.succeeded:
                continue
            changed = True
            if any(isinstance(op, Put) and op.key.startswith(k.outbox()) for op in ops):
                from . import messages

                messages.deliver(self, job_id + "/")
            for i in finished + started:
                log.info("layer %s %s %s", layers[i]["id"], layers[i]["name"], layers[i]["state"])
            if job["state"] != codec.unpack(job_kv.value)["state"]:
                log.info("job %s %s %s", job_id, job["name"], job["state"])
            for i in started:
                if i not in inline:
                    self.enqueue(user, layers[i]["id"], node=node)
            # and again: a big layer may have drained while it was queued, or layers were left over
        log.warning("settle of job %s gave up after %d tries (heavy contention)", job_id, MAX_TRIES)
        return changed

    def _messages(self, job: Value, was: str, ended_layers: list[Value]) -> list[Op]:
        """Outbox entries for the on_success / on_failure messages of what this settle ends."""
        from . import messages

        ops: list[Op] = []
        for layer in ended_layers:
            good = layer["state"] in states.DONE
            wanted = layer.get("on_success" if good else "on_failure") or []
            ops += messages.outbox_ops(self, job, wanted, "success" if good else "failure", f"layer{layer['index']}")
        if job["state"] != was and job["state"] in (states.COMPLETED, states.ERRORED):
            good = job["state"] == states.COMPLETED
            wanted = job.get("on_success" if good else "on_failure") or []
            ops += messages.outbox_ops(self, job, wanted, "success" if good else "failure",
                                       f"job{len(job.get('records', []))}")
        return ops

    def _counts(self, user: str, job_id: str, layer_ids: list[str]) -> dict[str, tuple[int, int, int]]:
        """(ready, claimed or orphaned, errored) per layer, read as one snapshot."""
        if not layer_ids:
            return {}
        k = self.keys
        ops: list[Get] = []
        for lid in layer_ids:
            ops += [Get.count(k.ready(lid + ".")), Get.count(k.claim(lid + ".")), Get.count(k.run(lid + ".")),
                    Get.count(k.tally(user, job_id, states.ERRORED, lid + "."))]
        out: dict[str, tuple[int, int, int]] = {}
        for start in range(0, len(ops), 120):
            res = self.store.read(ops[start:start + 120])
            for j in range(0, len(res.responses), 4):
                lid = layer_ids[(start + j) // 4]
                ready, claimed, running, errored = (r.count for r in res.responses[j:j + 4])
                out[lid] = (ready, max(claimed, running), errored)
        return out


def advance(job: Value, layers: dict[int, Value], node: str | None = None,
            emptied: list[int] | None = None) -> list[int]:
    """Start every layer that may start now (empty ones complete at once) and derive the job's
    state. Works on values in memory; returns the indices of layers set RUNNING, and appends
    those completed for having no tasks to ``emptied``."""
    started: list[int] = []
    by_id = {s["id"]: s for s in job["layers"]}
    while True:
        order = states.runnable_orders(model.summary_tuples(job))
        if order is None:
            break
        only_empty = True
        for s in job["layers"]:
            if s["order"] != order or s["state"] != states.PENDING:
                continue
            layer = layers[int(s["id"].rsplit(".", 1)[1])]
            if job.get("paused_at") or layer.get("paused_at"):  # waits, even when empty, until unpaused
                only_empty = False
                continue
            layer["tasks"] = s["tasks"] = max(layer["tasks"], s["tasks"])
            if layer.get("killed_at") or layer.get("skipped_at"):  # its tasks were stopped already
                model.move(layer, states.ERRORED if layer.get("killed_at") else states.SKIPPED,
                           "killed by a user" if layer.get("killed_at") else "skipped by a user", node)
                layer["started"] = layer["ended"] = model.now()
                if emptied is not None:
                    emptied.append(layer["index"])
                if layer["state"] == states.ERRORED and layer["on_error"] != "continue":
                    only_empty = False
            elif layer["tasks"] == 0:
                model.move(layer, states.COMPLETED, "it has no tasks", node)
                layer["started"] = layer["ended"] = model.now()
                if emptied is not None:
                    emptied.append(layer["index"])
            else:
                model.move(layer, states.RUNNING, "every layer of lower order is done", node)
                layer["started"] = model.now()
                layer["enqueued"] = False
                started.append(layer["index"])
                only_empty = False
            by_id[layer["id"]]["state"] = layer["state"]
        if not only_empty:
            break
    new_state = states.job_state(model.summary_tuples(job))
    if new_state != job["state"]:
        reason = {states.RUNNING: "a layer started", states.COMPLETED: "every layer is done",
                  states.ERRORED: "a layer errored and nothing else can run",
                  states.PENDING: "nothing started"}[new_state]
        model.move(job, new_state, reason, node)
        if new_state == states.RUNNING and not job.get("started"):
            job["started"] = model.now()
        if new_state in (states.COMPLETED, states.ERRORED):
            job["ended"] = model.now()
    return started
