"""Concurrency keys: at most ``limit`` tasks with one key run at once, across the cluster.

A task (or its layer or job) says ``concurrency: {key: "db-{tenant}", limit: 2, strategy: queue}``.
``{NAME}`` in the key is filled from the task's environment (job env, then layer env, then task
env: the variables the task itself gets), when the job is posted.

Slots (see docs/flow/concurrency.md):

* A key of limit L has slot keys ``conc/<key>/<n>`` for n in 0..L-1. A claim takes one free slot
  number in its own transaction: compare ``version == 0`` on that one slot key, put it on the
  runner's lease. At most L slot keys can exist, so at most L tasks hold the key: exact, whatever a
  node's view of the slots is (a stale view only makes the claim fail and be tried again).
* The finish transaction deletes the slot (fenced by the claim, as everything it writes), so a
  kill, skip, timeout or cancel frees it at once; a dead or partitioned node's slots go with its
  lease, within its TTL.

Which slot a running task holds is written in its value (``conc_slot``) by the same claim.
Everything here but :func:`holders` and :func:`why_waiting` (which read etcd through the store) is
pure. Bad values raise :class:`~conductor.errors.InvalidSpec` naming the field.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from . import codec
from .errors import InvalidSpec
from .keys import Keys, lease_hex
from .ops import Compare, Delete, Op, Put, absent
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

STRATEGIES = ("queue", "cancel-in-progress", "cancel-newest")
FIELDS = {"key", "limit", "strategy"}
MAX_LIMIT = 100  # slot numbers a claim may try; a cancel-newest skip compares them all in one txn
MAX_KEY = 200
_KEY = re.compile(r"^[A-Za-z0-9_.:@=+,-]+$")  # one key segment: no '/', no spaces
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|\{|\}")


# ---- the spec ---------------------------------------------------------------------------------------

def keyed_map(value: Any, field: str, known: set[str] | frozenset[str], example: str, example_key: str) -> str:
    """The checks a ``concurrency`` and a ``rate`` map share: a map, of known fields only, with a
    non-empty ``key``; returns the key as written. Raises InvalidSpec naming the field."""
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a map like {example}")
    for name in value:
        if name not in known:
            raise InvalidSpec(f"{field}.{name}", f"unknown field (known: {', '.join(sorted(known))})")
    key = value.get("key")
    if not isinstance(key, str) or not key.strip():
        raise InvalidSpec(f"{field}.key", f"is required: a non-empty string like {example_key}")
    return key


def parse(value: Any, field: str) -> dict[str, Any]:
    """A ``concurrency`` map as written -> ``{key, limit, strategy}`` (the key may still hold
    placeholders: :func:`fill` fills them). Raises InvalidSpec naming the field."""
    key = keyed_map(value, field, FIELDS, "{key: db-{tenant}, limit: 2, strategy: queue}", "db-{tenant}")
    limit = value.get("limit", 1)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidSpec(f"{field}.limit", f"must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}")
    strategy = value.get("strategy", "queue")
    if strategy not in STRATEGIES:
        raise InvalidSpec(f"{field}.strategy", f"must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    check_key(fill_text(key, None, f"{field}.key"), f"{field}.key")
    return {"key": key, "limit": int(limit), "strategy": strategy}


def fill_text(text: str, env: Mapping[str, str] | None, field: str) -> str:
    """``text`` with each ``{NAME}`` replaced by ``env[NAME]`` (``{{``/``}}`` for literal braces).
    With ``env`` None the placeholders are only checked and replaced by ``x``. Raises InvalidSpec
    naming the field when a name is not in ``env`` or a brace is unmatched."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) in ("{{", "}}"):
            return m.group(0)[0]
        name = m.group(1)
        if name is None:
            raise InvalidSpec(field, f"unmatched brace in {text!r} (write {{{{ or }}}} for a literal one)")
        if env is None:
            return "x"
        if name not in env:
            raise InvalidSpec(field, f"{{{name}}} is not in the task's environment (job, layer or task env)")
        return env[name]

    return _PLACEHOLDER.sub(one, text)


def check_key(key: str, field: str) -> str:
    if len(key) > MAX_KEY:
        raise InvalidSpec(field, f"is {len(key)} characters long, the limit is {MAX_KEY}")
    if not _KEY.match(key):
        raise InvalidSpec(field, f"{key!r} must be letters, digits and . _ : @ = + , - (no '/' or spaces)")
    return key


def fill(spec: dict[str, Any], env: Mapping[str, str], field: str) -> dict[str, Any]:
    """The spec with its key's placeholders filled from ``env``; raises InvalidSpec."""
    return {**spec, "key": check_key(fill_text(spec["key"], env, field), field)}


# ---- slots (pure) ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Holder:
    """One taken slot: ``conc/<key>/<n>``, held by ``task`` on ``node``'s lease."""

    key: str
    n: int
    task: str
    user: str
    node: str
    at: float
    create_revision: int = 0
    limit: int = 0


def free_slot(held: Iterable[int], limit: int) -> int | None:
    """A free slot number below ``limit`` (at random, so racing nodes rarely pick the same), or None."""
    taken = set(held)
    free = [n for n in range(limit) if n not in taken]
    return random.choice(free) if free else None


def slot_of(task: Mapping[str, Any]) -> tuple[str, int] | None:
    """(key, n) of the slot a RUNNING task's value says it holds, or None."""
    conc, n = task.get("concurrency"), task.get("conc_slot")
    if not conc or n is None:
        return None
    return str(conc["key"]), int(n)


def take_ops(keys: Keys, task: Mapping[str, Any], node: str, lease: int, at: float) -> tuple[list[Compare], list[Op]]:
    """The claim's part for ``task`` (whose value names its ``conc_slot``): the slot must be
    absent, and is created on the runner's lease."""
    slot = slot_of(task)
    if slot is None:
        return [], []
    key = keys.conc(*slot)
    value = {"task": task["id"], "user": task["user"], "node": node, "lease": lease_hex(lease), "at": at,
             "limit": task["concurrency"]["limit"]}
    return [absent(key)], [Put(key, codec.pack(value), lease=lease)]


def release_ops(keys: Keys, task: Mapping[str, Any]) -> list[Op]:
    """The finish's part: delete the slot the run held (the finish is fenced by the claim, and
    slot and claim were created together, so the slot is this run's)."""
    slot = slot_of(task)
    return [Delete(keys.conc(*slot))] if slot else []


def reason(key: str, limit: int, holders: list[Holder]) -> str:
    """Why a task waits: ``waiting for concurrency key db-eu (2 of 2 held by t1 on n1, ...)``."""
    who = ", ".join(f"{h.task} on {h.node}" for h in sorted(holders, key=lambda h: h.n)[:5])
    more = f" and {len(holders) - 5} more" if len(holders) > 5 else ""
    return f"waiting for concurrency key {key} ({len(holders)} of {limit} held by {who}{more})"


def parse_holder(keys: Keys, key: str, value: bytes, create_revision: int) -> Holder | None:
    """A slot key and value -> Holder (None for a key that is not a slot Conductor wrote)."""
    rest = keys.strip(key)[len("conc/"):]
    name, _, n = rest.rpartition("/")
    if not name or not n.isdigit():
        return None
    v = codec.unpack(value) if value else {}
    return Holder(name, int(n), str(v.get("task", "?")), str(v.get("user", "")), str(v.get("node", "?")),
                  float(v.get("at", 0) or 0), create_revision, int(v.get("limit", 0) or 0))


# ---- reading (views, `conductor keys`) ------------------------------------------------------------

def holders(store: Store, keys: Keys, key: str | None = None) -> list[Holder]:
    """The taken slots of ``key`` (or of every key), read now."""
    found = []
    for kv in store.iter_prefix(keys.conc(key) if key else keys.conc()):
        holder = parse_holder(keys, kv.key, kv.value, kv.create_revision)
        if holder is not None:
            found.append(holder)
    return found


def why_waiting(store: Store, keys: Keys, task: Mapping[str, Any]) -> str | None:
    """The reason a QUEUED task waits for its key, or None when its key has a free slot."""
    conc = task.get("concurrency")
    if not conc:
        return None
    held = [h for h in holders(store, keys, conc["key"]) if h.n < conc["limit"]]
    return reason(conc["key"], conc["limit"], held) if len(held) >= conc["limit"] else None
