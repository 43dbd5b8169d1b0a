"""Read-only views of what is in etcd, as plain JSON-ready maps (what ``show --json`` prints).

Every object carries its ``etag`` (its key's mod_revision). Progress counts come from the job's
counter keys (conductor/counts.py), never from reading every task, and a job or layer view holds
only a page of each layer's tasks (read by exact key), so what a view reads does not grow with the
size of the job.
"""
from __future__ import annotations

import json
import time
from typing import Any, cast

from . import backoff, batch, chunks, codec, concurrency, counts, deadlines, ids, model, owners, placement, ratelimit, states
from .board import UNSTORED_DEFAULTS, Board
from .errors import InvalidSpec, NotFound, PermissionDenied
from .keys import Keys
from .ops import KV, Get
from .store import Store

PAGE_TASKS = 20  # tasks shown per layer unless asked otherwise (the CLI, the web pages and API)
SHOW_TASKS = 100  # tasks per layer Client.show returns unless asked otherwise (0 asks for all)
WAITING_SAMPLE = 16  # queued tasks per layer (of its last task keys and chunk) judged for a layer's waiting
RUNNING_SHOWN = 50  # a node's running task ids listed (``running_tasks``; ``running`` counts them all)
COUNT_FIELDS = ("pending", "queued", "running", "completed", "errored", "skipped", "total")


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data.decode("utf-8", "replace")


def with_etag(value: dict[str, Any], kv: KV) -> dict[str, Any]:
    """A value as views show it: its ``etag``, and a task's fields that post leaves out while
    they hold their defaults (board.UNSTORED_DEFAULTS) put back."""
    out = {**_defaults(), **value} if value.get("kind") == "task" else dict(value)
    out.pop("v", None)
    out["etag"] = kv.mod_revision
    return out


def _defaults() -> dict[str, Any]:
    """UNSTORED_DEFAULTS, their maps fresh (a caller may change what a view returns)."""
    return {name: dict(value) if isinstance(value, dict) else value for name, value in UNSTORED_DEFAULTS.items()}


def job_counts(store: Store, keys: Keys, jobs: list[dict[str, Any]]) -> list[dict[str, int]]:
    """Task counts by state for each job (or layer: a map with ``user``, ``job``, ``id``, ``tasks``,
    ``state``), never by reading tasks: the few counter keys of its job (conductor/counts.py, running
    and final states), as many entries per snapshot as fit. The tasks of a layer that has started and
    neither run nor ended are ``queued``; those of any other layer ``pending``."""
    items = [batch.Item([Get.prefix(keys.count(job["user"], job.get("job", job["id"])))], tag=job) for job in jobs]
    out = []
    for group in batch.fit(items):  # each group one snapshot
        res = store.read([op for op in group.ops if isinstance(op, Get)])
        for response, tag in zip(res.responses, group.tags):
            job = cast("dict[str, Any]", tag)
            ended = counts.total(kv.value for kv in response.kvs)
            layers = [job] if "job" in job else [*job.get("layers", []), *(job.get("compensation") or {}).get("layers", [])]
            out.append(_counted(job.get("tasks", 0), layers, ended))
    return out


def _counted(total: int, layers: list[dict[str, Any]], ended: counts.Delta) -> dict[str, int]:
    """Counts by state of ``total`` tasks in ``layers`` (values or the job's layer lines)."""
    out = {name: 0 for name in COUNT_FIELDS}
    for layer in layers:
        per = counts.of_layer(ended, layer["id"])
        left = max(0, int(layer.get("tasks") or 0) - sum(per.values()))
        out["queued" if layer.get("state") == states.RUNNING else "pending"] += left
        for state, n in per.items():
            out[state.lower()] += n
    out["total"] = total
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
        users = owners.users(store, keys)  # admins and nodes only: etcd refuses others
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


def job_tree(board: Board, job_id: str, user: str, tasks: int = PAGE_TASKS,
             after: str | None = None) -> dict[str, Any]:
    """A job with its layers, each with its counts by state and one page of its tasks.

    Reads a bounded number of keys whatever the job's size: the job and its layers (one
    snapshot), counts from key counts, and ``tasks`` tasks per layer (0: every task). ``after``
    (a task id) continues that task's layer after it; the other layers show their first page.
    Each read is a consistent snapshot, the view as a whole is not. Raises NotFound, and
    InvalidSpec for a bad ``tasks`` or ``after``."""
    store, keys = board.store, board.keys
    snap = store.read([Get(keys.job(user, job_id)), Get.prefix(keys.layer(user, job_id + "."))])
    if not snap.responses[0].kvs:
        raise NotFound(f"no job {job_id}")
    job = with_etag(codec.unpack(snap.responses[0].kvs[0].value), snap.responses[0].kvs[0])
    layers = sorted((with_etag(codec.unpack(kv.value), kv) for kv in snap.responses[1].kvs),
                    key=lambda layer: (bool(layer.get("compensation")), layer["order"], layer["index"]))
    start = _after_number(after, job_id, layers)
    counts = job_counts(store, keys, [job, *layers])
    job["counts"] = counts[0]
    for layer, layer_counts in zip(layers, counts[1:]):
        layer["counts"] = layer_counts
        layer["records"] = layer.get("records", [])
    fill_pages(store, keys, user, layers, tasks, start)
    add_waiting(store, keys, layers)
    job["waiting"] = next((layer["waiting"] for layer in layers if layer["waiting"]), None)
    job["deadline_at"] = deadlines.deadline_at(job)  # None without a deadline (docs/flow/deadlines.md)
    job["layer_list"] = layers
    return job


def layer_detail(board: Board, layer_id: str, user: str, tasks: int = PAGE_TASKS,
                 after: str | None = None) -> dict[str, Any]:
    """A layer with its counts by state and one page of its tasks (see :func:`job_tree`)."""
    store, keys = board.store, board.keys
    kv = store.get(keys.layer(user, layer_id))
    if kv is None:
        raise NotFound(f"no layer {layer_id}")
    layer = with_etag(codec.unpack(kv.value), kv)
    start = _after_number(after, layer["job"], [layer])
    layer["counts"] = job_counts(store, keys, [layer])[0]
    fill_pages(store, keys, user, [layer], tasks, start)
    add_waiting(store, keys, [layer])
    return layer


def _after_number(after: str | None, job_id: str, layers: list[dict[str, Any]]) -> dict[str, int]:
    """{layer id: first task number to show} for ``after``, a task id of one of ``layers``."""
    if after is None:
        return {}
    try:
        parsed: ids.ParsedId | None = ids.parse_id(after)
    except InvalidSpec:
        parsed = None
    if parsed is None or parsed.kind != "task" or parsed.task is None \
            or parsed.layer_id not in {layer["id"] for layer in layers}:
        where = layers[0]["id"] if len(layers) == 1 else job_id
        raise InvalidSpec("after", f"{after!r} is not a task id of {where}")
    return {parsed.layer_id: parsed.task + 1}


def fill_pages(store: Store, keys: Keys, user: str, layers: list[dict[str, Any]], limit: int,
               start: dict[str, int] | None = None) -> None:
    """Give each layer ``task_list`` (a page of its committed tasks in number order), ``more``
    (how many tasks come after the page) and ``next`` (the task id to page on from, or None).

    A page is read by exact keys ``<layer>.<n>`` (numbers below the layer's ``next``), so it
    costs about ``limit`` key reads however big the layer is, and comes in number order where a
    range read would give ``.0, .1, .10, .100``. ``limit`` 0 reads every task. Raises InvalidSpec
    for a negative ``limit``."""
    if limit < 0:
        raise InvalidSpec("tasks", f"must be 0 (all) or more, not {limit}")
    start = start or {}
    if limit:
        _pages_by_key(store, keys, user, layers, limit, start)
    else:
        for layer in layers:
            first = start.get(layer["id"], 0)
            layer["task_list"] = _all_tasks(store, keys, user, layer, first)
            layer["more"], layer["next"] = 0, None
    for layer in layers:
        for task in layer["task_list"]:
            task.pop("records", None)


def _all_tasks(store: Store, keys: Keys, user: str, layer: dict[str, Any], first: int) -> list[dict[str, Any]]:
    """Every committed task of a layer from number ``first`` on: its key's value, or what its chunk
    gives (conductor/chunks.py), in number order."""
    raw = [kv.value for kv in store.iter_prefix(keys.chunk(user, layer["id"]))]
    out = {n: _keyless(layer, task) for n, task in chunks.tasks_of(layer, raw, chunks.state_in(layer)).items()}
    for kv in store.iter_prefix(keys.task(user, layer["id"] + ".")):
        task = with_etag(codec.unpack(kv.value), kv)
        if model.committed(task, layer):
            out[chunks.number_of(task["id"])] = task
    return [task for n, task in sorted(out.items()) if n >= first]


def _keyless(layer: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """A task without a key as views show it: etag 0 (a write compared on it creates the key)."""
    return with_etag(task, KV("", b"", 0, 0, 0))


def _pages_by_key(store: Store, keys: Keys, user: str, layers: list[dict[str, Any]], limit: int,
                  start: dict[str, int]) -> None:
    """Read ``limit + 1`` committed tasks per layer by exact key, with the chunks that hold them,
    in rounds (numbers reserved by an add that never committed leave holes, read past in the next
    round)."""
    cursor = {layer["id"]: start.get(layer["id"], 0) for layer in layers}
    pages: dict[str, list[dict[str, Any]]] = {layer["id"]: [] for layer in layers}
    by_id = {layer["id"]: layer for layer in layers}
    while True:
        wanted: dict[str, range] = {}
        for layer in layers:
            lid, end = layer["id"], layer.get("next", layer.get("tasks", 0))
            missing = limit + 1 - len(pages[lid])
            numbers = range(cursor[lid], min(end, cursor[lid] + missing)) if missing > 0 else range(0)
            if numbers:
                wanted[lid] = numbers
            cursor[lid] += len(numbers)
        if not wanted:
            break
        _read_tasks(store, keys, user, wanted, by_id, pages)
    for layer in layers:
        page = pages[layer["id"]]
        layer["task_list"], extra = page[:limit], page[limit:]
        layer["next"] = layer["task_list"][-1]["id"] if extra else None
        # Exact for a first page; after a task, counted from numbers (so an estimate if an add
        # that never committed left holes).
        seen = start.get(layer["id"], 0) + limit
        layer["more"] = max(1, layer.get("tasks", 0) - seen) if extra else 0


def _read_tasks(store: Store, keys: Keys, user: str, wanted: dict[str, range],
                by_id: dict[str, dict[str, Any]], pages: dict[str, list[dict[str, Any]]]) -> None:
    """Read tasks by key and the chunks that hold the rest, in snapshots that fit etcd's limits,
    into their layer's page in number order."""
    items = []
    for lid, numbers in wanted.items():
        gets = [Get(keys.task(user, f"{lid}.{n}")) for n in numbers]
        gets += [Get(keys.chunk(user, lid, 0), keys.chunk(user, lid, numbers.start + 1), limit=1, descending=True),
                 Get(keys.chunk(user, lid, numbers.start + 1), keys.chunk(user, lid, numbers.stop))]
        items.append(batch.Item(gets, tag=lid))
    for group in batch.fit(items):
        responses = iter(store.read([op for op in group.ops if isinstance(op, Get)]).responses)
        for tag in group.tags:
            lid = str(tag)
            layer, numbers = by_id[lid], wanted[lid]
            keyed = [next(responses) for _ in numbers]
            raw = [kv.value for r in (next(responses), next(responses)) for kv in r.kvs]
            given = chunks.tasks_of(layer, raw, chunks.state_in(layer))
            for n, r in zip(numbers, keyed):
                task = with_etag(codec.unpack(r.kvs[0].value), r.kvs[0]) if r.kvs else None
                if task is not None and model.committed(task, layer):
                    pages[layer["id"]].append(task)
                elif task is None and n in given:
                    pages[layer["id"]].append(_keyless(layer, given[n]))


def task_detail(board: Board, task_id: str, user: str) -> dict[str, Any]:
    store, keys = board.store, board.keys
    found = board.load_task(user, task_id)  # a task without a key yet: what its chunk gives, etag 0
    if found is None:
        raise NotFound(f"no task {task_id}")
    task = with_etag(*found)
    snap = store.read([Get(keys.result(user, task_id)), Get(keys.log(user, task_id))])
    result_r, log_r = snap.responses
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
    task["claimed"] = task["state"] == states.RUNNING  # a RUNNING task is its claim
    if task["state"] == states.QUEUED:
        task["waiting"] = task_waiting(task, live_nodes(store, keys)) or flow_waiting(store, keys, task)
    return task


def list_nodes(store: Store, keys: Keys) -> list[dict[str, Any]]:
    """Live nodes with their facts and what they run: each node key says (``running``,
    ``running_tasks``: up to RUNNING_SHOWN ids), rewritten by its node within a second of a change."""
    nodes = []
    for kv in store.iter_prefix(keys.node()):
        info = codec.unpack(kv.value)
        info.pop("v", None)
        info["running"] = int(info.get("running") or 0)
        info["running_tasks"] = sorted(info.get("running_tasks") or [])[:RUNNING_SHOWN]
        nodes.append(info)
    return sorted(nodes, key=lambda n: n.get("name", ""))


# ---- why queued tasks wait ------------------------------------------------------------------------

def live_nodes(store: Store, keys: Keys) -> list[dict[str, Any]] | None:
    """The node keys (each on its node's lease, so only live nodes have one), as their values;
    None for a user who may not see nodes (etcd auth on, not an admin)."""
    try:
        return [codec.unpack(kv.value) for kv in store.iter_prefix(keys.node())]
    except PermissionDenied:
        return None


def task_waiting(task: dict[str, Any], nodes: list[dict[str, Any]] | None) -> str | None:
    """Why ``task`` waits: its retry delay (backoff.waiting), else why no live node can hold it
    (``waiting: ...``, see placement.why_waiting; not said when the nodes cannot be seen), else its
    start_within (deadlines.waiting), or None."""
    now = time.time()
    placed = None if nodes is None else placement.why_waiting(task.get("needs") or {}, nodes,
                                                               container=bool(task.get("image")))
    return backoff.waiting(task, now) or placed or deadlines.waiting(task, now)


def flow_waiting(store: Store, keys: Keys, task: dict[str, Any]) -> str | None:
    """Why a QUEUED task waits for its concurrency key or rate limit (read now), or None (also
    when this user may not read the cluster's slots and rate logs)."""
    try:
        return concurrency.why_waiting(store, keys, task) or ratelimit.why_waiting(store, keys, task)
    except PermissionDenied:
        return None


class _Judge:
    """task_waiting, once per distinct (needs, container): a layer's tasks mostly share them."""

    def __init__(self, nodes: list[dict[str, Any]] | None):
        self.nodes = nodes
        self.seen: dict[str, str | None] = {}

    def __call__(self, task: dict[str, Any]) -> str | None:
        if "not_before" in task or "start_within" in task:  # a wait of its own, not shared
            return task_waiting(task, self.nodes)
        key = json.dumps([task.get("needs") or {}, bool(task.get("image"))], sort_keys=True, default=str)
        if key not in self.seen:
            self.seen[key] = task_waiting(task, self.nodes)
        return self.seen[key]

    def flow(self, store: Store, keys: Keys, task: dict[str, Any]) -> str | None:
        """flow_waiting, once per distinct pair of keys on a page."""
        if not task.get("concurrency") and not task.get("rate"):
            return None
        key = json.dumps(["flow", task.get("concurrency"), task.get("rate")], sort_keys=True, default=str)
        if key not in self.seen:
            self.seen[key] = flow_waiting(store, keys, task)
        return self.seen[key]


def add_waiting(store: Store, keys: Keys, layers: list[dict[str, Any]]) -> None:
    """Give each QUEUED task of the layers' pages its ``waiting`` (a reason or None) and each layer
    ``waiting``: the first reason among its page's queued tasks and up to WAITING_SAMPLE of its
    queued tasks from its last task keys and its last chunk (so it costs a bounded read however
    big the layer), or None. Reads the live node keys only when something is queued."""
    for layer in layers:
        layer["waiting"] = None
    page_queued = {layer["id"]: [t for t in layer["task_list"] if t["state"] == states.QUEUED] for layer in layers}
    judged = [layer for layer in layers if (layer.get("counts") or {}).get("queued") or page_queued[layer["id"]]]
    if not judged:
        return
    judge = _Judge(live_nodes(store, keys))
    samples = _ready_samples(store, keys, [(layer["user"], layer["id"]) for layer in judged])
    for layer in judged:
        for task in page_queued[layer["id"]]:
            task["waiting"] = judge(task) or judge.flow(store, keys, task)
        reasons = (judge(t) or judge.flow(store, keys, t)
                   for t in (*page_queued[layer["id"]], *samples.get(layer["id"], [])))
        layer["waiting"] = next((r for r in reasons if r), None)


def _ready_samples(store: Store, keys: Keys, layer_ids: list[tuple[str, str]]) -> dict[str, list[dict[str, Any]]]:
    """{layer id: up to WAITING_SAMPLE of its queued tasks}: QUEUED ones among its last
    2 x WAITING_SAMPLE task keys (a retry, a lost node's task), then the specs of its last chunk
    (what its tasks that have no key yet ask for), in snapshots that fit etcd's limits."""
    items = [batch.Item([Get.prefix(keys.task(user, lid + "."), limit=2 * WAITING_SAMPLE, descending=True),
                         Get.prefix(keys.chunk(user, lid), limit=1, descending=True),
                         Get(keys.layer(user, lid))], tag=lid) for user, lid in layer_ids]
    found: dict[str, list[dict[str, Any]]] = {}
    for group in batch.fit(items):
        responses = store.read([op for op in group.ops if isinstance(op, Get)]).responses
        for n, lid in enumerate(group.tags):
            keyed, last, layer_r = responses[3 * n:3 * n + 3]
            sample = [t for kv in keyed.kvs if (t := codec.unpack(kv.value)).get("state") == states.QUEUED]
            if last.kvs and layer_r.kvs:
                layer = codec.unpack(layer_r.kvs[0].value)
                given = list(chunks.tasks_of(layer, [last.kvs[0].value], states.QUEUED).values())
                sample += _keyless_of(store, keys, given[-WAITING_SAMPLE:])
            found[str(lid)] = sample[:WAITING_SAMPLE]
    return found


def _keyless_of(store: Store, keys: Keys, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Those of ``tasks`` (as their chunk gives them) that have no key: still what the chunk says."""
    if not tasks:
        return []
    found = store.read([Get(keys.task(t["user"], t["id"]), keys_only=True) for t in tasks]).responses
    return [t for t, r in zip(tasks, found) if not r.kvs]
