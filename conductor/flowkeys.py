"""What ``conductor keys`` shows: every concurrency key with its holders and waiters, every rate
key with its recent starts, its waiters and when the next start may be. Read-only, from one read of
the slots, one of the rate logs and one of the tasks (the QUEUED ones wait)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import chunks, codec, concurrency, ratelimit
from .errors import PermissionDenied

if TYPE_CHECKING:
    from .keys import Keys
    from .store import Store

MAX_LISTED = 50  # waiter ids listed per key (all are counted)


def _objects(store: "Store", keys: "Keys", user: str | None) -> Any:
    """Every user's jobs, layers, chunks and tasks (nodes, admins, no etcd auth); else ``user``'s."""
    try:
        return list(store.iter_prefix(keys.q("u")))
    except PermissionDenied:
        if user is None:
            raise
        return list(store.iter_prefix(keys.objects(user)))


def _queued(store: "Store", keys: "Keys", user: str | None) -> list[dict[str, Any]]:
    """The queued tasks: QUEUED task keys, and the running layers' tasks that have no key yet
    (what their chunks give: conductor/chunks.py)."""
    layers: dict[str, dict[str, Any]] = {}
    raw: dict[str, list[bytes]] = {}
    keyed: dict[str, dict[str, Any]] = {}
    for kv in _objects(store, keys, user):
        kind, _, name = keys.split_stream(kv.key)
        try:
            if kind == "layers":
                layers[name] = codec.unpack(kv.value)
            elif kind == "chunks":
                raw.setdefault(name.partition("/")[0], []).append(kv.value)
            elif kind == "tasks":
                keyed[name] = codec.unpack(kv.value)
        except Exception:  # noqa: BLE001 - not a value Conductor wrote: nothing waits there
            continue
    out = [t for t in keyed.values() if isinstance(t, dict) and t.get("state") == "QUEUED"]
    for layer_id, values in raw.items():
        layer = layers.get(layer_id)
        if isinstance(layer, dict) and layer.get("state") == "RUNNING":
            out += [t for t in chunks.tasks_of(layer, values, "QUEUED").values() if t["id"] not in keyed]
    return out


def _waiters(store: "Store", keys: "Keys", user: str | None = None) -> tuple[dict[str, list[dict[str, Any]]],
                                                                           dict[str, list[dict[str, Any]]]]:
    """{key: queued tasks} for concurrency and for rate keys (only ``user``'s when etcd lets them
    see no other)."""
    conc: dict[str, list[dict[str, Any]]] = {}
    rate: dict[str, list[dict[str, Any]]] = {}
    for task in _queued(store, keys, user):
        if task.get("concurrency"):
            conc.setdefault(task["concurrency"]["key"], []).append(task)
        if task.get("rate"):
            rate.setdefault(task["rate"]["key"], []).append(task)
    return conc, rate


def overview(store: "Store", keys: "Keys", now: float | None = None, user: str | None = None) -> list[dict[str, Any]]:
    """One map per key: ``kind`` (concurrency or rate), ``key``, ``limit``, and for concurrency
    ``held``, ``holders`` (task, user, node, slot, since) and ``strategy``; for rate ``per``,
    ``recent`` (starts in the last window) and ``next_start`` (epoch seconds, null: now); both have
    ``waiting`` (a count) and ``waiters`` (up to MAX_LISTED task ids)."""
    now = time.time() if now is None else now
    conc_wait, rate_wait = _waiters(store, keys, user)
    by_key: dict[str, list[concurrency.Holder]] = {}
    for h in concurrency.holders(store, keys):
        by_key.setdefault(h.key, []).append(h)
    out: list[dict[str, Any]] = []
    for key in sorted(set(by_key) | set(conc_wait)):
        held, waiting = sorted(by_key.get(key, []), key=lambda h: h.n), conc_wait.get(key, [])
        spec = waiting[0]["concurrency"] if waiting else {}
        out.append({"kind": "concurrency", "key": key, "limit": spec.get("limit") or max((h.limit for h in held), default=0),
                    "strategy": spec.get("strategy"), "held": len(held),
                    "holders": [{"task": h.task, "user": h.user, "node": h.node, "slot": h.n, "since": h.at} for h in held],
                    "waiting": len(waiting), "waiters": [t["id"] for t in waiting[:MAX_LISTED]]})
    logs = ratelimit.read(store, keys)
    for key in sorted(set(logs) | set(rate_wait)):
        found, waiting = logs.get(key) or ratelimit.Log(), rate_wait.get(key, [])
        spec = waiting[0]["rate"] if waiting else {"limit": found.limit, "per": found.keep}
        when = ratelimit.earliest(found.starts, spec["limit"], spec["per"]) if spec["limit"] else 0.0
        out.append({"kind": "rate", "key": key, "limit": spec["limit"], "per": spec["per"],
                    "recent": sum(1 for t in found.starts if t > now - spec["per"]),
                    "next_start": when if when > now else None,
                    "waiting": len(waiting), "waiters": [t["id"] for t in waiting[:MAX_LISTED]]})
    return out
