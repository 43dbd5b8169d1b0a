"""Watch events turned into transition records: what ``conductor events`` prints, one per line.

Pure: no etcd here (:mod:`conductor.eventfeed` follows etcd and calls :func:`transitions`). A record
is a plain map::

    {"rev": 1234, "at": 1764430000.123, "kind": "task", "id": "<job>.0.1", "state": "RUNNING",
     "from": "QUEUED", "reason": "claimed by n1", "node": "n1", "user": "ann", "job": "<job>"}

``rev`` is the etcd revision of the write (every record of one write shares it), so a reader that
saw everything up to ``rev`` resumes with ``--since rev + 1``. What makes a record:

- jobs, layers, tasks (``q/u/<u>/jobs|layers|tasks/<id>``): one record per history record the
  write added (a value keeps its history in ``records``; ``records_dropped`` counts those trimmed,
  so ``records_dropped + len(records)`` only grows). A write that adds no record (a log push, the
  node's bookkeeping) is no transition. A value's creation without a record (layers and tasks are
  born PENDING with an empty history) is one record with ``from`` null; a delete (the job was
  removed) is one record with state ``removed``.
- nodes (``nodes/<name>``, rewritten every few seconds): ``joined`` on creation, ``left`` on delete.
- fires (``fires/<user>/<schedule>/<tick>``): one record whenever the fire's ``state`` changes
  (``firing``, then ``posted`` or ``skipped: ...``); a fire's removal by retention is not one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from . import codec
from .keys import Keys
from .ops import KV, Event

Record = dict[str, Any]

REMOVED = "removed"
JOINED = "joined"
LEFT = "left"
KINDS = ("job", "layer", "task", "node", "fire")
_USER_KINDS = {"jobs": "job", "layers": "layer", "tasks": "task"}


def classify(keys: Keys, key: str) -> tuple[str, str | None, str] | None:
    """(kind, user, id) of a key that can make transitions; None for every other key."""
    parts = keys.strip(key).split("/")
    if len(parts) == 5 and parts[:2] == ["q", "u"] and parts[3] in _USER_KINDS:
        return _USER_KINDS[parts[3]], parts[2], parts[4]
    if len(parts) == 2 and parts[0] == "nodes" and parts[1]:
        return "node", None, parts[1]
    if len(parts) == 4 and parts[0] == "fires" and parts[3]:
        return "fire", parts[1], f"{parts[2]}/{parts[3]}"
    return None


def transitions(keys: Keys, event: Event) -> list[Record]:
    """The transition records one watch event makes (often none). Never raises on a value it
    cannot decode: such a write makes no record."""
    what = classify(keys, event.kv.key)
    if what is None:
        return []
    kind, user, some_id = what
    try:
        value = codec.unpack(event.kv.value) if event.kind == "put" else {}
        prev = codec.unpack(event.prev.value) if event.prev is not None else None
    except (ValueError, TypeError):  # msgpack's decode errors are ValueErrors
        return []
    base = {"rev": event.kv.mod_revision, "kind": kind, "id": some_id, "user": user}
    if kind == "node":
        return _node(base, event, value, prev)
    if kind == "fire":
        return _fire(base, event, value, prev)
    return _object(base, event.kv, value, prev)


def _record(base: Record, state: str, old: str | None, reason: str | None, node: str | None,
            at: float | None, job: str | None = None) -> Record:
    out = {**base, "at": at, "state": state, "from": old, "reason": reason, "node": node}
    if job is not None:
        out["job"] = job
    return out


def _total(value: dict[str, Any]) -> int:
    return int(value.get("records_dropped", 0)) + len(value.get("records", []))


def _object(base: Record, kv: KV, value: dict[str, Any], prev: dict[str, Any] | None) -> list[Record]:
    """Records of a job, layer or task write: one per history record it added."""
    job = base["id"].split(".")[0]
    if not value:  # deleted
        old = prev.get("state") if prev else None
        return [_record(base, REMOVED, old, None, None, None, job)]
    records = value.get("records", [])
    if prev is None and kv.version > 1:  # history we cannot diff (should not happen with prev_kv)
        added = min(1, len(records))
    else:
        added = min(_total(value) - (_total(prev) if prev else 0), len(records))
    old = prev.get("state") if prev else None
    if added <= 0:
        if prev is not None:
            return []  # no record added: a log push, bookkeeping
        return [_record(base, value.get("state", ""), None, None, None, value.get("created"), job)]
    out = []
    for rec in records[len(records) - added:]:
        out.append(_record(base, rec.get("state", ""), old, rec.get("reason"), rec.get("node"), rec.get("at"), job))
        old = rec.get("state")
    return out


def _node(base: Record, event: Event, value: dict[str, Any], prev: dict[str, Any] | None) -> list[Record]:
    if event.kind == "delete":
        return [_record(base, LEFT, JOINED, None, base["id"], None)]
    if event.kv.version != 1:
        return []  # the node rewrites its key every few seconds: not a transition
    return [_record(base, JOINED, None, None, base["id"], value.get("started") or value.get("at"))]


def _fire(base: Record, event: Event, value: dict[str, Any], prev: dict[str, Any] | None) -> list[Record]:
    if event.kind == "delete":
        return []
    state = str(value.get("state", ""))
    old = prev.get("state") if prev else None
    if prev is not None and old == state:
        return []
    at = value.get("done") if prev is not None else value.get("at")
    return [_record(base, state, old, None, value.get("node"), at, value.get("job"))]


@dataclass
class Filter:
    """Which records a follower wants: ``user`` None for every user's; ``ids`` (full job, layer or
    task ids) for those objects and what they hold (a job's layers and tasks), nothing else."""

    user: str | None = None
    ids: list[str] = field(default_factory=list)

    def wants(self, record: Record) -> bool:
        if self.ids:
            return record["kind"] in ("job", "layer", "task") and any(
                record["id"] == i or record["id"].startswith(i + ".") for i in self.ids)
        return self.user is None or record.get("user") in (None, self.user)


def select(keys: Keys, events: Iterable[Event], wanted: Filter) -> list[Record]:
    """Every wanted record of ``events``, in their order (the order etcd applied them)."""
    return [r for ev in events for r in transitions(keys, ev) if wanted.wants(r)]


def line(record: Record) -> str:
    """The readable one-line form (``--json`` prints the record itself)."""
    moved = record["state"]
    if record.get("from") and record["from"] != record["state"]:  # equal: a record without a move (a pause)
        moved = f"{record['from']} -> {moved}"
    where = f" on {record['node']}" if record.get("node") and record["kind"] != "node" else ""
    why = f": {record['reason']}" if record.get("reason") else ""
    return f"{record['rev']:>8} {record['kind']:<5} {record['id']} {moved}{where}{why}"
