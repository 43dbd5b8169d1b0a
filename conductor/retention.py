"""Bounded storage: finished jobs are removed after a while, and etcd's history is compacted.

Whichever node holds the sweeper role does this periodically (``conductor run --keep``), and
``conductor gc`` does it at once. Removing a job is one transaction of range deletes guarded by the
job's revision, so it is idempotent and never removes a job that changed (was retried) meanwhile.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from . import codec, states
from .board import Board
from .ops import Delete, Put, mod_is

log = logging.getLogger("conductor.retention")

DEFAULT_KEEP = 7 * 86400.0
COMPACT_EVERY = 3600.0


def old_jobs(board: Board, keep: float, now: float | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(user, job id, job) of every job finished more than ``keep`` seconds ago."""
    now = now or time.time()
    out = []
    for kv in board.store.iter_prefix(board.keys.index()):
        job_id = kv.key.rsplit("/", 1)[1]
        user = codec.unpack(kv.value).get("user", "")
        found = board.load(board.keys.job(user, job_id))
        if found is None:
            continue
        job, _ = found
        ended = job.get("ended")
        if job["state"] in (states.COMPLETED, states.ERRORED) and ended and now - ended >= keep:
            out.append((user, job_id, job))
    return out


def remove_job(board: Board, user: str, job_id: str) -> bool:
    """Delete every key of a finished job in one transaction; False if it changed or is gone."""
    k = board.keys
    found = board.load(k.job(user, job_id))
    if found is None:
        return False
    job, kv = found
    if job["state"] not in (states.COMPLETED, states.ERRORED):
        return False
    dot = job_id + "."
    ops = [Delete.prefix(k.task(user, dot)), Delete.prefix(k.layer(user, dot)),
           Delete.prefix(k.result(user, dot)), Delete.prefix(k.log(user, dot)), Delete.prefix(k.tally(user, job_id)),
           Delete.prefix(k.paused(job_id)), Delete.prefix(k.kill(dot)), Delete.prefix(k.ready(dot)),
           Delete(k.secrets(user, job_id)), Delete(k.active(job_id)), Delete(k.index(job_id)), Delete(kv.key)]
    return board.store.txn([mod_is(kv.key, kv.mod_revision)], ops).succeeded


def collect(board: Board, keep: float, dry_run: bool = False) -> list[str]:
    """Remove jobs finished more than ``keep`` seconds ago; returns their ids."""
    removed = []
    for user, job_id, job in old_jobs(board, keep):
        if dry_run or remove_job(board, user, job_id):
            removed.append(job_id)
            if not dry_run:
                log.info("job %s %s removed (finished %s, kept %.0fs)", job_id, job["name"],
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(job["ended"])), keep)
    return removed


def compact(board: Board, every: float = COMPACT_EVERY, force: bool = False) -> int | None:
    """Compact etcd's history up to the revision recorded ``every`` seconds ago (so watchers a
    little behind do not have to list again), then record the current one. Returns the revision
    compacted to, or None when it was not time yet."""
    store, key = board.store, board.keys.meta("compaction")
    kv = store.get(key)
    now = time.time()
    current = store.revision()
    mark = codec.unpack(kv.value) if kv else {}
    if kv is not None and not force and now - mark.get("at", 0) < every:
        return None
    target = current if force else mark.get("revision")
    if target:
        store.compact(target)
        log.info("etcd history compacted to revision %d", target)
    compare = [mod_is(key, kv.mod_revision)] if kv else []
    store.txn(compare, [Put(key, codec.pack({"revision": current, "at": now}))])
    return target
