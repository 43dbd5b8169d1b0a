"""Task caching: a task whose cache key matches a completed run within its TTL completes at once
from that run's result, without running its command.

The rules, and where each happens (see ``docs/flow/caching.md``):

* **Spec.** ``cache: {key: "build-{COMMIT}", ttl: 7d}`` on a job, layer or task (inherited
  downwards like ``timeout``; a task's own wins). ``{NAME}`` placeholders name variables of the
  task's environment as the job, layer and task ``env`` merge it (a template's inputs reach a key
  through ``env``, which templates fill in); ``{{`` and ``}}`` are literal braces. :func:`parse`
  and :func:`check_placeholders` refuse a bad value before anything is written.
* **Entry.** The finish transaction of a task that COMPLETED by running, with a cache key, also
  writes ``memo/<user>/<key>``: the task, when it ended, its TTL and its result bytes (see
  :func:`memo_ops`). Entries are per user, so one user's run never answers another user's task.
* **Lookup.** The node that claimed a task looks its key up before it builds the environment
  (:func:`lookup`, called by the claimer): a hit completes the claimed task with the entry's result
  (its finish is the ordinary fenced finish, so tallies, settling and messages are unchanged) and
  never starts the command. Checking at claim rather than at queue time keeps one writer per hit
  (the claim's holder), sees entries written after the task was queued, and costs one read only
  for tasks that have a key. A hit's own finish writes no entry, so hits never extend the TTL.
* **Expiry.** An entry counts while ``now - ended <= ttl`` of the task looking (checked on read,
  so expiry is exact), and is removed by the sweeper once its writer's TTL has passed
  (:func:`sweep`). Not a lease: a lease per entry costs a grant per completed task and etcd
  extends leases across leader changes anyway, so the read check would be needed all the same.
* **Bypass.** ``no_cache`` on the job (``conductor post --no-cache``) or on a task (``conductor
  retry --no-cache``) skips the lookup; the run still writes a fresh entry.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import quote

from . import codec
from .errors import InvalidSpec
from .keys import Keys
from .model import Value
from .ops import Delete, Op, Put, mod_is

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("conductor.taskcache")

FIELDS = {"key", "ttl"}
MAX_KEY = 512  # characters of a key as written (before placeholders are filled in)
MAX_TTL = 366 * 86400.0
MAX_STORED_KEY = 200  # a filled-in key longer than this (once quoted) is stored as its SHA-256
SWEEP_PAGE = 100  # entries read per page by the sweeper (each may hold up to 64 KiB of result)
CACHED = "cached"  # the first word of a hit's reason

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|\{|\}")


# ---- the spec -------------------------------------------------------------------------------

def parse(value: Any, field: str) -> dict[str, Any]:
    """A ``cache`` map -> ``{"key": str, "ttl": seconds}``; raises InvalidSpec naming the field."""
    from . import fields as spec  # the field readers (spec re-exports them)

    if not isinstance(value, dict):
        raise InvalidSpec(field, "must be a map like {key: \"build-{COMMIT}\", ttl: 7d}")
    for name in value:
        if name not in FIELDS:
            raise InvalidSpec(f"{field}.{name}", f"unknown field (known: {', '.join(sorted(FIELDS))})")
    if "key" not in value:
        raise InvalidSpec(f"{field}.key", "is required: the text that names equal runs, like \"build-{COMMIT}\"")
    key = spec._str(value["key"], f"{field}.key", limit=MAX_KEY)
    placeholders(key, f"{field}.key")
    if "ttl" not in value:
        raise InvalidSpec(f"{field}.ttl", "is required: how long a completed run counts, like 7d or 12h")
    ttl = spec.parse_duration(value["ttl"], f"{field}.ttl", MAX_TTL)
    if ttl <= 0:
        raise InvalidSpec(f"{field}.ttl", "must be more than 0")
    return {"key": key, "ttl": ttl}


def placeholders(key: str, field: str) -> list[str]:
    """The variable names ``key`` uses; raises InvalidSpec for a lone brace."""
    names = []
    for m in _PLACEHOLDER.finditer(key):
        token = m.group(0)
        if token in ("{{", "}}"):
            continue
        if m.group(1) is None:
            raise InvalidSpec(field, f"has a lone {token!r}; write {token * 2} for a literal brace")
        names.append(m.group(1))
    return names


def check_placeholders(job: dict[str, Any]) -> None:
    """Refuse a task whose cache key names a variable its merged env (job, layer, task) lacks."""
    for li, layer in enumerate(job["layers"]):
        base = {**job.get("env", {}), **layer.get("env", {})}
        for ti, task in enumerate(layer["tasks"]):
            cache = task.get("cache")
            if not cache:
                continue
            env = {**base, **task.get("env", {})}
            for name in placeholders(cache["key"], "cache.key"):
                if name not in env:
                    raise InvalidSpec(f"layers[{li}].tasks[{ti}].cache.key",
                                      f"uses {{{name}}}, which is not in the task's env (job, layer and task env)")


# ---- keys -----------------------------------------------------------------------------------

def fill(key: str, env: Mapping[str, str]) -> str | None:
    """The key with its placeholders filled in from ``env``; None when one is missing (an
    ``env set`` removed it after the post: the task then runs uncached)."""
    missing = False

    def one(m: re.Match[str]) -> str:
        nonlocal missing
        token = m.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = m.group(1)
        if name is None or name not in env:
            missing = True
            return ""
        return env[name]

    out = _PLACEHOLDER.sub(one, key)
    return None if missing else out


def stored_name(key: str) -> str:
    """The last segment of the entry's etcd key: the filled-in key, quoted (no ``/``), or its
    SHA-256 when that is long."""
    name = quote(key, safe="-_.:@=+,")
    if len(name) > MAX_STORED_KEY:
        return "sha256-" + hashlib.sha256(key.encode()).hexdigest()
    return name


def memo_key(keys: Keys, user: str, key: str) -> str:
    # top level, written by nodes only (like conc/, rates/); the user segment keeps users apart
    return keys.memo(user, stored_name(key))


def merged_env(task: Value, job: Value, layer: Value) -> dict[str, str]:
    """The env a cache key is filled from: the job's, then the layer's, then the task's."""
    env: dict[str, str] = {}
    for part in (job.get("env"), layer.get("env"), task.get("env")):
        env.update(part or {})
    return env


def resolve(task: Value, job: Value, layer: Value) -> str | None:
    """The filled-in cache key of a claimed task, or None when it has none."""
    cache = task.get("cache")
    if not cache:
        return None
    return fill(cache["key"], merged_env(task, job, layer))


# ---- lookup (the claimer) -------------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    """A completed run whose result a task takes instead of running."""

    key: str
    task: str  # the task id whose run is reused
    ended: float
    result: bytes | None
    node: str | None

    @property
    def reason(self) -> str:
        return f"{CACHED}: result of {self.task} completed at {_when(self.ended)} (key {self.key})"


def fresh(entry: Mapping[str, Any], ttl: float, now: float) -> bool:
    """Does an entry count for a task whose TTL is ``ttl``? Both its own and the writer's TTL must
    still hold (the sweeper removes it once the writer's has passed)."""
    ended = float(entry.get("ended", 0))
    return now - ended <= min(ttl, float(entry.get("ttl", ttl))) and ended <= now + 60


def bypassed(task: Value, job: Value) -> bool:
    return bool(task.get("no_cache") or job.get("no_cache"))


def lookup(store: "Store", keys: Keys, task: Value, job: Value, layer: Value, now: float) -> Hit | None:
    """The hit for a claimed task, or None (no key, bypassed, no entry, expired, or the entry is
    the task's own). One read. Raises StoreError when etcd cannot be read."""
    if not task.get("cache") or bypassed(task, job):
        return None
    key = resolve(task, job, layer)
    if key is None:
        log.info("task %s: cache key %r cannot be filled in from its env; running it", task["id"], task["cache"]["key"])
        return None
    kv = store.get(memo_key(keys, task["user"], key))
    if kv is None:
        return None
    entry = codec.unpack(kv.value)
    if entry.get("task") == task["id"] or not fresh(entry, float(task["cache"]["ttl"]), now):
        return None
    return Hit(key, entry["task"], float(entry["ended"]), entry.get("result"), entry.get("node"))


# ---- the entry (the finish transaction) -----------------------------------------------------

def memo_ops(keys: Keys, task: Value, job: Value, layer: Value, state: str, result: bytes | None,
             node: str, cached: bool) -> list[Op]:
    """The entry a finish writes: only for a task with a key that COMPLETED by running (a hit
    writes none, so the TTL counts from the run that did the work)."""
    if state != "COMPLETED" or cached or not task.get("cache"):
        return []
    key = resolve(task, job, layer)
    if key is None:
        return []
    ttl = float(task["cache"]["ttl"])
    ended = float(task.get("ended") or time.time())
    entry = {"key": key, "task": task["id"], "job": task["job"], "name": task["name"], "node": node,
             "ended": ended, "ttl": ttl, "expires": ended + ttl, "result": result}
    return [Put(memo_key(keys, task["user"], key), codec.pack(entry))]


# ---- expiry (the sweeper) -------------------------------------------------------------------

def sweep(store: "Store", keys: Keys, now: float) -> int:
    """Remove every entry whose writer's TTL has passed; returns how many. Each delete is compared
    with the revision read, so an entry rewritten meanwhile stays. Cost: one read of every entry
    (pages of SWEEP_PAGE), so the sweeper runs it hourly."""
    removed = 0
    for kv in store.iter_prefix(keys.memo(), page=SWEEP_PAGE):
        try:
            expires = float(codec.unpack(kv.value).get("expires", 0))
        except Exception:  # not ours to judge (another tool's key): leave it
            continue
        if expires < now and store.txn([mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)]).succeeded:
            removed += 1
    if removed:
        log.info("cache: removed %d expired entr%s", removed, "y" if removed == 1 else "ies")
    return removed


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


__all__ = ["Hit", "bypassed", "check_placeholders", "fill", "fresh", "lookup", "memo_ops", "parse",
           "resolve", "stored_name", "sweep"]
