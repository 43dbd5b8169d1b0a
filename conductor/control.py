"""Steering jobs while they run: pause, unpause, kill, retry, skip, add tasks, env and results.

Every change names its target by id and may carry the etag (mod_revision) the caller last saw: a
stale etag is refused with :class:`StaleEtag`, naming the object and its current etag, and nothing
is written. Without an etag a change applies to the current version (retrying on races).

Atomicity: a change to one task, or to the flags of one layer or job, is one transaction. A change
that covers many tasks (kill a layer) writes the layer's flag first, then the tasks in chunks; the
flag alone already decides the layer's outcome, so a client that dies half way leaves a layer that
ends as asked. Running tasks are stopped by the node that runs them: a kill request
(``q/kills/<task>``) is written, and that node kills the process group and commits the outcome.
"""
from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Callable

from . import batch, chunks, codec, counts, ids, lifecycle, model, spec, states
from .board import Board
from .claims import decision_ops
from .errors import NotFound, Refused, StaleEtag
from .model import Value
from .ops import KV, Compare, Delete, Op, Put, mod_is

log = logging.getLogger("conductor.control")

MAX_TRIES = 30


@dataclass(frozen=True)
class Target:
    kind: str  # "job", "layer" or "task"
    id: str
    user: str
    etag: int | None = None


@dataclass
class Result:
    """What a change did to one object, for the CLI to report."""

    id: str
    done: str  # e.g. "paused", "already paused", "kill requested"
    etag: int | None = None


class Control:
    def __init__(self, board: Board, by: str):
        self.board = board
        self.store = board.store
        self.keys = board.keys
        self.by = by
        # one counter key per action, however many tasks it changes (conductor/counts.py)
        writer = "a" + secrets.token_hex(6)
        self.counts = counts.Writer(self.store, self.keys, lambda: writer)

    def key_of(self, t: Target) -> str:
        return {"job": self.keys.job, "layer": self.keys.layer, "task": self.keys.task}[t.kind](t.user, t.id)

    def _load(self, key: str, what: str) -> tuple[Value, KV]:
        found = self.board.load(key)
        if found is None:
            raise NotFound(f"no {what}")
        return found

    def _loaded(self, t: Target) -> tuple[Value, KV]:
        """The value of a job, layer or task and its key (a task without a key yet: what its chunk
        gives, at revision 0, so the write creates the key); raises NotFound, StaleEtag."""
        if t.kind == "task":
            found = self.board.load_task(t.user, t.id)
            if found is None:
                raise NotFound(f"no task {t.id}")
            value, kv = found
        else:
            value, kv = self._load(self.key_of(t), f"{t.kind} {t.id}")
        if t.etag is not None and kv.mod_revision != t.etag:
            raise StaleEtag(t.id, t.etag, kv.mod_revision)
        return value, kv

    def _retrying(self, t: Target, attempt: Callable[[], Result | None]) -> Result:
        """Run ``attempt`` until it commits; a lost race with an etag given is a stale etag."""
        for _ in range(MAX_TRIES):
            result = attempt()
            if result is not None:
                return result
            if t.etag is not None:
                _, kv = self._loaded(Target(t.kind, t.id, t.user))
                raise StaleEtag(t.id, t.etag, kv.mod_revision)
        raise Refused(f"{t.id}: gave up after {MAX_TRIES} tries; it changes too often right now")

    def _settle(self, job: str, user: str) -> None:
        self.board.settle(job, user, node=None)

    # ---- pause / unpause ---------------------------------------------------------------------

    def pause(self, t: Target, paused: bool = True) -> Result:
        word = "paused" if paused else "unpaused"

        def attempt() -> Result | None:
            value, kv = self._loaded(t)
            if bool(value.get("paused_at")) == paused:
                return Result(t.id, f"already {word}", kv.mod_revision)
            value["paused_at"] = model.now() if paused else 0
            model.add_record(value, value["state"], f"{word} by {self.by}")
            data = codec.pack(value)
            ops: list[Op] = [Put(kv.key, data)]
            ops.append(Put(self.keys.paused(t.user, t.id), codec.pack({"by": self.by, "at": model.now()})) if paused
                       else Delete(self.keys.paused(t.user, t.id)))
            res = self.store.txn([mod_is(kv.key, kv.mod_revision)], ops)
            return Result(t.id, word, res.revision) if res.succeeded else None

        result = self._retrying(t, attempt)
        log.info("%s %s %s by %s", t.kind, t.id, result.done, self.by)
        if not paused and result.done == word:
            self._settle(t.id.split(".")[0], t.user)  # layers held back by the pause may start now
        return result

    # ---- kill / skip -------------------------------------------------------------------------

    def stop(self, t: Target, action: str, grace: float = 10.0) -> Result:
        """``action`` is "kill" (ERRORED, reason killed) or "skip" (SKIPPED, counts as done)."""
        if t.kind == "task":
            result = self._retrying(t, lambda: self._stop_task(t, action, grace, t.etag))
        else:
            result = self._retrying(t, lambda: self._flag(t, action))
            layers = [t.id] if t.kind == "layer" else self._layer_ids(t.user, t.id)
            for layer_id in layers:
                if t.kind == "job":
                    layer = Target("layer", layer_id, t.user)
                    self._retrying(layer, functools.partial(self._flag, layer, action))
                found = self.board.load(self.keys.layer(t.user, layer_id))
                for value, _ in (self.board.layer_tasks(t.user, found[0]) if found else {}).values():
                    task = Target("task", value["id"], t.user)
                    self._retrying(task, functools.partial(self._stop_task, task, action, grace, None))
        self._settle(t.id.split(".")[0], t.user)
        return result

    def _layer_ids(self, user: str, job_id: str) -> list[str]:
        """The job's own layers: not its compensation layers, which run after a kill (compensation.py)."""
        found = self.board.load(self.keys.job(user, job_id))
        own = {s["id"] for s in found[0]["layers"]} if found else None
        return [lid for kv in self.store.iter_prefix(self.keys.layer(user, job_id + "."), keys_only=True)
                if own is None or (lid := kv.key.rsplit("/", 1)[1]) in own]

    def _flag(self, t: Target, action: str) -> Result | None:
        """Mark a layer or job killed or skipped: its outcome, whatever its tasks do now."""
        value, kv = self._loaded(t)
        field = "killed_at" if action == "kill" else "skipped_at"
        if value["state"] in states.FINAL and action == "kill":
            return Result(t.id, f"already {value['state']}", kv.mod_revision)
        if value.get(field):
            return Result(t.id, f"already {'killed' if action == 'kill' else 'skipped'}", kv.mod_revision)
        value[field] = model.now()
        model.add_record(value, value["state"], f"{'killed' if action == 'kill' else 'skipped'} by {self.by}")
        res = self.store.txn([mod_is(kv.key, kv.mod_revision)], [Put(kv.key, codec.pack(value))])
        return Result(t.id, "kill requested" if action == "kill" else "skip requested", res.revision) \
            if res.succeeded else None

    def _stop_task(self, t: Target, action: str, grace: float, etag: int | None) -> Result | None:
        """Kill or skip one task (one transaction). A RUNNING task gets a kill request that its
        node (or whoever recovers it) honours; any other is changed as lifecycle decides."""
        task, kv = self._loaded(Target("task", t.id, t.user, etag))
        if task["state"] == states.RUNNING:
            return self._request_stop(t, kv, action, grace)
        decide = lifecycle.decide_kill if action == "kill" else lifecycle.decide_skip
        decision = decide(task, self.by, model.now())
        if not decision.changed:
            return Result(t.id, decision.done, kv.mod_revision)
        res = self.counts.txn([mod_is(kv.key, kv.mod_revision)], decision_ops(self.keys, decision), decision)
        return Result(t.id, decision.done, res.revision) if res.succeeded else None

    def _request_stop(self, t: Target, kv: KV, action: str, grace: float) -> Result | None:
        k = self.keys
        request = {"action": action, "by": self.by, "grace": grace, "at": model.now()}
        # compared on the RUNNING task as read: its node honours the request, or whoever recovers
        # it if its lease ended; if it ended meanwhile, this is tried again on what it became
        res = self.store.txn([mod_is(kv.key, kv.mod_revision)], [Put(k.kill(t.user, t.id), codec.pack(request))])
        return Result(t.id, f"{'kill' if action == 'kill' else 'skip'} requested", kv.mod_revision) \
            if res.succeeded else None

    # ---- retry -------------------------------------------------------------------------------

    def retry(self, t: Target, no_cache: bool = False) -> Result:
        """Run ERRORED tasks again whatever their attempt count (a task id: whatever its state,
        unless it is running). Each retried task gets ``max_attempts`` more executions. With
        ``no_cache`` the retried tasks take no cached result (taskcache.py). A job's retry leaves
        its compensation tasks alone (compensation.py)."""
        if t.kind == "task":
            result = self._retrying(t, lambda: self._retry_task(t, t.etag, explicit=True, no_cache=no_cache))
        else:
            _, kv = self._loaded(t)
            result = Result(t.id, "retried", kv.mod_revision)
            prefix = self.keys.task(t.user, t.id + ".")
            count = 0
            for task_kv in self.store.iter_prefix(prefix):
                value = codec.unpack(task_kv.value)
                if value["state"] != states.ERRORED or value.get("compensation"):
                    continue
                task = Target("task", task_kv.key.rsplit("/", 1)[1], t.user)
                self._retrying(task, functools.partial(self._retry_task, task, None, False, no_cache))
                count += 1
            result.done = f"retried {count} errored task(s)"
        self._settle(t.id.split(".")[0], t.user)
        return result

    def _retry_task(self, t: Target, etag: int | None, explicit: bool, no_cache: bool = False) -> Result | None:
        """Run one task again with fresh budgets (lifecycle.decide_retry), sending its layer and
        job back to RUNNING: one transaction over the three. Raises Refused for a RUNNING task."""
        k = self.keys
        task, kv = self._loaded(Target("task", t.id, t.user, etag))
        layer, layer_kv = self._load(k.layer(t.user, task["layer"]), f"layer {task['layer']}")
        job, job_kv = self._load(k.job(t.user, task["job"]), f"job {task['job']}")
        decision = lifecycle.decide_retry(task, self.by, layer["state"], model.now(), explicit)
        if not decision.changed:
            return Result(t.id, decision.done, kv.mod_revision)
        decision.task.pop("no_cache", None)  # taskcache.py: a --no-cache retry bypasses the cache once
        if no_cache:
            decision.task["no_cache"] = True
        ops = decision_ops(self.keys, decision)
        for flag in ("killed_at", "skipped_at"):
            layer.pop(flag, None)
            job.pop(flag, None)
        if layer["state"] not in (states.PENDING, states.RUNNING):
            model.move(layer, states.RUNNING, f"task {t.id} was retried by {self.by}")
            layer.update(enqueued=True, ended=None)
        if job["state"] in (states.COMPLETED, states.ERRORED):
            model.move(job, states.RUNNING, f"task {t.id} was retried by {self.by}")
            job["ended"] = None
            ops.append(Put(k.active(t.user, job["id"]), codec.pack({"user": t.user})))
        for s in job["layers"]:
            if s["id"] == layer["id"]:
                s["state"] = layer["state"]
                s.pop("killed", None)
        ops += [Put(layer_kv.key, codec.pack(layer)), Put(job_kv.key, codec.pack(job))]
        compare = [mod_is(kv.key, kv.mod_revision), mod_is(layer_kv.key, layer_kv.mod_revision),
                   mod_is(job_kv.key, job_kv.mod_revision)]
        res = self.counts.txn(compare, ops, decision)
        return Result(t.id, "retried", res.revision) if res.succeeded else None

    # ---- adding tasks ------------------------------------------------------------------------

    def add_tasks(self, t: Target, task_specs: list[Any]) -> list[str]:
        """Add tasks to a layer that has not started; refused once it has. Returns their ids."""
        if t.kind != "layer":
            raise Refused(f"{t.id} is not a layer id: tasks are added to a layer")
        layer, _ = self._loaded(t)
        job_env = (self.board.load(self.keys.job(t.user, layer["job"])) or ({}, None))[0].get("env", {})
        specs = [spec.fill_task_keys(spec.validate_task(s, f"tasks[{i}]", layer.get("defaults", {}), layer["next"] + i),
                                     {**job_env, **layer.get("env", {})}, f"tasks[{i}]")  # flow control keys
                 for i, s in enumerate(task_specs)]
        if not specs:
            raise Refused("no tasks given")
        stager = Stager(self.board, t.user, t.id, token=f"add-{secrets.token_hex(4)}")
        added = stager.stage(specs, guard=[])
        for _ in range(MAX_TRIES):  # the etag was checked before the numbers were reserved
            ops, compare = stager.commit_ops(self.by)
            if self.store.txn(compare, ops).succeeded:
                log.info("layer %s: %d task(s) added by %s", t.id, len(added), self.by)
                return added
        raise Refused(f"{t.id}: could not add tasks, the layer changes too often right now")

    # ---- env and results ---------------------------------------------------------------------

    def set_env(self, t: Target, changes: dict[str, str | None]) -> Result:
        """Set (or with None, remove) env variables of a job, layer or task; applies to tasks not
        yet started."""
        def attempt() -> Result | None:
            value, kv = self._loaded(t)
            env = dict(value.get("env") or {})
            for name, val in changes.items():
                if val is None:
                    env.pop(name, None)
                else:
                    env[name] = val
            value["env"] = spec.parse_env(env, "env")
            model.add_record(value, value["state"], f"env changed by {self.by}: {', '.join(sorted(changes))}")
            res = self.store.txn([mod_is(kv.key, kv.mod_revision)], [Put(kv.key, codec.pack(value))])
            return Result(t.id, "env set", res.revision) if res.succeeded else None

        return self._retrying(t, attempt)

    def set_result(self, t: Target, data: bytes, cap: int = 64 * 1024) -> Result:
        if t.kind != "task":
            raise Refused(f"{t.id} is not a task id: results belong to tasks")
        if len(data) > cap:
            raise Refused(f"result is {len(data)} bytes, over the cap of {cap} bytes")
        key = self.keys.result(t.user, t.id)

        def attempt() -> Result | None:
            current = self.store.get(key)
            if t.etag is not None and (current.mod_revision if current else 0) != t.etag:
                raise StaleEtag(t.id, t.etag, current.mod_revision if current else 0)
            value = {"data": data, "by": self.by, "at": model.now()}
            compare = [mod_is(key, current.mod_revision)] if current else [Compare(key, "version", "==", 0)]
            res = self.store.txn(compare, [Put(key, codec.pack(value))])
            return Result(t.id, "result set", res.revision) if res.succeeded else None

        return self._retrying(Target(t.kind, t.id, t.user, None), attempt)


class Stager:
    """Adds a batch of tasks to a PENDING layer in any size, exactly once.

    Numbers are reserved first (the layer's ``next``), then the tasks are written as chunk keys
    (conductor/chunks.py) marked with the batch's ``token``, and one commit transaction adds the
    batch to the layer's task count and committed tokens. Until then the staged chunks are ignored
    by every reader; a batch never committed (its writer died) stays ignored, and goes with its
    job.
    """

    def __init__(self, board: Board, user: str, layer_id: str, token: str):
        self.board = board
        self.keys = board.keys
        self.user = user
        self.layer_id = layer_id
        self.token = token
        self.count = 0

    def stage(self, specs: list[dict[str, Any]], guard: list[Compare]) -> list[str]:
        """Reserve numbers and write the tasks; ``guard`` compares go into every transaction
        (a fenced node passes its claim's compare). The tasks are written in as many transactions
        as etcd's limits on count and bytes need (:func:`batch.fit`); none of them is part of the
        layer before :meth:`commit_ops` is written. Raises Refused if the layer has started or the
        guard stops holding, TooLarge if one task alone does not fit."""
        k = self.keys
        store = self.board.store
        for _ in range(MAX_TRIES):
            layer, kv = self._layer()
            first = layer["next"]
            layer["next"] = first + len(specs)
            res = store.txn(guard + [mod_is(kv.key, kv.mod_revision)], [Put(kv.key, codec.pack(layer))])
            if res.succeeded:
                break
        else:
            raise Refused(f"layer {self.layer_id} changes too often to add tasks now")
        tasks = [model.new_task(layer, first + i, task_spec) for i, task_spec in enumerate(specs)]
        ids_out = [task["id"] for task in tasks]
        items = [batch.Item([Put(k.chunk(self.user, self.layer_id, n), chunks.value(n, part, self.token))])
                 for n, part in chunks.cut([chunks.spec_of(t, first + i) for i, t in enumerate(tasks)], first)]
        items += [batch.Item([Put(k.paused(t["user"], t["id"]), b"")]) for t in tasks if t.get("paused_at")]
        guard_bytes = batch.Item((), guard).size
        for group in batch.fit(items, reserve_compare=len(guard), reserve_bytes=guard_bytes):
            if not store.txn(guard, group.ops).succeeded:
                raise Refused(f"layer {self.layer_id}: lost the right to add tasks while writing them")
        self.count = len(specs)
        return ids_out

    def _layer(self) -> tuple[Value, KV]:
        found = self.board.load(self.keys.layer(self.user, self.layer_id))
        if found is None:
            raise NotFound(f"no layer {self.layer_id}")
        layer, kv = found
        if layer["state"] != states.PENDING:
            raise Refused(f"layer {self.layer_id} is {layer['state']}: tasks can only be added before it starts")
        return layer, kv

    def commit_ops(self, by: str) -> tuple[list[Op], list[Compare]]:
        """The ops and compares that make the staged batch part of the layer (and its job), to write
        in one transaction (the caller may add its own, which must then be checked with
        :func:`batch.fits`). Raises NotFound, Refused (the layer started) or TooLarge."""
        layer, kv = self._layer()
        job_id = ids.parse_id(self.layer_id).job
        found = self.board.load(self.keys.job(self.user, job_id))
        if found is None:
            raise NotFound(f"no job {job_id}")
        job, job_kv = found
        layer["tasks"] += self.count
        layer.setdefault("committed", []).append(self.token)
        model.add_record(layer, layer["state"], f"{self.count} task(s) added by {by}")
        job["tasks"] = job.get("tasks", 0) + self.count
        for s in job["layers"]:
            if s["id"] == self.layer_id:
                s["tasks"] = layer["tasks"]
        ops: list[Op] = [Put(kv.key, codec.pack(layer)), Put(job_kv.key, codec.pack(job))]
        compare = [mod_is(kv.key, kv.mod_revision), mod_is(job_kv.key, job_kv.mod_revision)]
        if not batch.fits(ops, compare):  # the committed tokens grow with every batch
            raise batch.TooLarge(f"layer {self.layer_id}: the layer and job values are too big to add more tasks")
        return ops, compare


def committed(task: Value, layer: Value) -> bool:
    """Is this task part of its layer (not a staged batch that was never committed)?"""
    return "staged" not in task or task["staged"] in layer.get("committed", [])


__all__ = ["Control", "Target", "Result", "Stager"]
