"""Read-only views of what is in etcd, as plain JSON-ready maps (what ``show --json`` prints).

Every object carries its ``etag`` (its key's mod_revision). Progress counts come from counting
keys (ready markers, claims, tallies), never from reading every task.
"""
from __future__ import annotations

import time
from typing import Any

from . import codec, ids, model, states
from .board import Board
from .keys import Keys
from .ops import KV, Get
from .store import Store

COUNT_FIELDS = ("pending", "queued", "running", "completed", "errored", "skipped", "total")


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data.decode("utf-8", "replace")


def with_etag(value: dict[str, Any], kv: KV) -> dict[str, Any]:
    out = dict(value)
    out.pop("v", None)
    out["etag"] = kv.mod_revision
    return out


def job_counts(store: Store, keys: Keys, jobs: list[dict[str, Any]]) -> list[dict[str, int]]:
    """Task counts by state for each job (or layer: a map with ``user``, ``job``, ``id``, ``tasks``),
    from key counts, never by reading tasks (one snapshot per 24 of them)."""
    ops: list[Get] = []
    for job in jobs:
        user, jid, prefix = job["user"], job.get("job", job["id"]), job["id"] + "."
        ops += [Get.count(keys.ready(prefix)), Get.count(keys.claim(prefix))]
        ops += [Get.count(keys.tally(user, jid, s, prefix)) for s in (states.COMPLETED, states.ERRORED, states.SKIPPED)]
    results: list[int] = []
    for start in range(0, len(ops), 120):
        res = store.read(ops[start:start + 120])
        results += [r.count for r in res.responses]
    out = []
    for i, job in enumerate(jobs):
        queued, running, completed, errored, skipped = results[i * 5:i * 5 + 5]
        total = job.get("tasks", 0)
        out.append({"pending": max(0, total - queued - running - completed - errored - skipped),
                    "queued": queued, "running": running, "completed": completed, "errored": errored,
                    "skipped": skipped, "total": total})
    return out


def job_summary(job: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    return {"id": job["id"], "name": job["name"], "user": job["user"], "state": job["state"],
            "paused": bool(job.get("paused_at")), "created": job["created"], "started": job.get("started"),
            "ended": job.get("ended"), "etag": job.get("etag"), "counts": counts,
            "layers": job.get("layers", []), "source": job.get("source")}


def list_jobs(board: Board, *, user: str | None = None, all_users: bool = False, state: str | None = None,
              name: str | None = None, node: str | None = None, limit: int = 50,
              offset: int = 0) -> list[dict[str, Any]]:
    """Jobs newest first, filtered, with progress counts."""
    store, keys = board.store, board.keys
    if all_users:
        index = store.scan(keys.index(), keys_only=False)[0]
        users = sorted({codec.unpack(kv.value)["user"] for kv in index})
    else:
        users = [user or ""]
    found: list[dict[str, Any]] = []
    for u in users:
        for kv in store.iter_prefix(keys.job(u)):
            job = with_etag(codec.unpack(kv.value), kv)
            if state and job["state"] != state.upper():
                continue
            if name and name not in job["name"]:
                continue
            if node and not _ran_on(store, keys, job, node):
                continue
            found.append(job)
    found.sort(key=lambda j: j["id"], reverse=True)
    page = found[offset:offset + limit] if limit else found[offset:]
    counts = job_counts(store, keys, page)
    return [job_summary(j, c) for j, c in zip(page, counts)]


def _ran_on(store: Store, keys: Keys, job: dict[str, Any], node: str) -> bool:
    """Did any task of this job run (or is any running) on ``node``? Reads the job's tasks."""
    return any(codec.unpack(kv.value).get("node") == node
               for kv in store.iter_prefix(keys.task(job["user"], job["id"] + ".")))


def job_tree(board: Board, job_id: str, user: str) -> dict[str, Any]:
    """A job with its layers and tasks (each with state, attempts, node, exit code, times)."""
    store, keys = board.store, board.keys
    snap = store.read([Get(keys.job(user, job_id)), Get.prefix(keys.layer(user, job_id + "."))])
    if not snap.responses[0].kvs:
        from .errors import NotFound

        raise NotFound(f"no job {job_id}")
    job = with_etag(codec.unpack(snap.responses[0].kvs[0].value), snap.responses[0].kvs[0])
    layers = sorted((with_etag(codec.unpack(kv.value), kv) for kv in snap.responses[1].kvs),
                    key=lambda layer: (layer["order"], layer["index"]))
    tasks: dict[str, list[dict[str, Any]]] = {layer["id"]: [] for layer in layers}
    by_id = {layer["id"]: layer for layer in layers}
    for kv in store.iter_prefix(keys.task(user, job_id + ".")):
        task = with_etag(codec.unpack(kv.value), kv)
        if task["layer"] in by_id and not model.committed(task, by_id[task["layer"]]):
            continue
        task.pop("records", None)
        tasks.setdefault(task["layer"], []).append(task)
    for layer in layers:
        layer["task_list"] = sorted(tasks.get(layer["id"], []), key=lambda t: ids.id_sort_key(t["id"]))
        layer["records"] = layer.get("records", [])
    job["counts"] = job_counts(store, keys, [job])[0]
    job["layer_list"] = layers
    return job


def task_detail(board: Board, task_id: str, user: str) -> dict[str, Any]:
    store, keys = board.store, board.keys
    snap = store.read([Get(keys.task(user, task_id)), Get(keys.result(user, task_id)), Get(keys.log(user, task_id)),
                       Get(keys.claim(task_id))])
    task_r, result_r, log_r, claim_r = snap.responses
    if not task_r.kvs:
        from .errors import NotFound

        raise NotFound(f"no task {task_id}")
    task = with_etag(codec.unpack(task_r.kvs[0].value), task_r.kvs[0])
    if result_r.kvs:
        result = codec.unpack(result_r.kvs[0].value)
        task["result"] = _text(result.get("data"))
        task["result_etag"] = result_r.kvs[0].mod_revision
    else:
        task["result"] = None
    if log_r.kvs:
        entry = codec.unpack(log_r.kvs[0].value)
        task["log"] = {"tail": _text(entry.get("data")), "size": entry.get("size"), "attempt": entry.get("attempt"),
                       "node": entry.get("node"), "path": entry.get("path"), "truncated": entry.get("truncated")}
    else:
        task["log"] = None
    if task["state"] == states.RUNNING and task.get("started"):
        task["elapsed"] = round(time.time() - task["started"], 1)
    task["claimed"] = bool(claim_r.kvs)
    return task


def layer_detail(board: Board, layer_id: str, user: str) -> dict[str, Any]:
    store, keys = board.store, board.keys
    kv = store.get(keys.layer(user, layer_id))
    if kv is None:
        from .errors import NotFound

        raise NotFound(f"no layer {layer_id}")
    layer = with_etag(codec.unpack(kv.value), kv)
    tasks = [with_etag(codec.unpack(t.value), t) for t in store.iter_prefix(keys.task(user, layer_id + "."))]
    tasks = [t for t in tasks if model.committed(t, layer)]
    for t in tasks:
        t.pop("records", None)
    layer["task_list"] = sorted(tasks, key=lambda t: ids.id_sort_key(t["id"]))
    layer["counts"] = job_counts(store, keys, [layer])[0]
    return layer


def list_nodes(store: Store, keys: Keys) -> list[dict[str, Any]]:
    """Live nodes with their facts and the slots their claims use now."""
    snap = store.read([Get.prefix(keys.node()), Get.prefix(keys.claim())])
    used: dict[str, int] = {}
    for kv in snap.responses[1].kvs:
        node = str(codec.unpack(kv.value).get("node"))
        used[node] = used.get(node, 0) + 1
    nodes = []
    for kv in snap.responses[0].kvs:
        info = codec.unpack(kv.value)
        info.pop("v", None)
        info["running"] = used.get(str(info.get("name")), 0)
        nodes.append(info)
    return sorted(nodes, key=lambda n: n.get("name", ""))
