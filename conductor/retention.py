"""Bounded storage: finished jobs are removed after a while, and etcd's history is compacted.

Whichever node holds the sweeper role does this periodically (``conductor run --keep``), and
``conductor gc`` does it at once. Removing a job is one transaction of range deletes guarded by the
job's revision, so it is idempotent and never removes a job that changed (was retried) meanwhile.

Ages are judged on the cluster's reference time (:mod:`conductor.clock`), not one node's clock: a
node whose clock is skewed runs neither chore, and a job whose ``ended`` lies further in the future
than the clock bound (stamped by a clock running ahead) is never removed on its account.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from . import codec, owners, states
from .board import Board
from .clock import Clock, ended_in_future
from .errors import NoSpace
from .ops import Delete, Put, mod_is

log = logging.getLogger("conductor.retention")

DEFAULT_KEEP = 7 * 86400.0
COMPACT_EVERY = 3600.0


def is_old(job: dict[str, Any], keep: float, now: float) -> bool:
    """Finished more than ``keep`` seconds before ``now``, and not stamped in the future."""
    ended = job.get("ended")
    if job.get("state") not in (states.COMPLETED, states.ERRORED) or not ended:
        return False
    return now - ended >= keep and not ended_in_future(ended, now)


def old_jobs(board: Board, keep: float, now: float | None = None,
             users: list[str] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    """(user, job id, job) of every job of ``users`` (default: every account, which only nodes
    and admins may list) finished more than ``keep`` seconds before ``now``."""
    now = now or time.time()
    out = []
    for user in users if users is not None else owners.users(board.store, board.keys):
        for kv in board.store.iter_prefix(board.keys.job(user)):
            job = codec.unpack(kv.value)
            if is_old(job, keep, now):
                out.append((user, board.keys.last(kv.key), job))
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
    ops = [Delete.prefix(k.task(user, dot)), Delete.prefix(k.layer(user, dot)), Delete.prefix(k.chunks(user, dot)),
           Delete.prefix(k.result(user, dot)), Delete.prefix(k.log(user, dot)), Delete.prefix(k.count(user, job_id)),
           Delete.prefix(k.paused(user, job_id)), Delete.prefix(k.kill(user, dot)),
           Delete(k.secrets(user, job_id)), Delete(k.active(user, job_id)), Delete(kv.key)]
    return board.store.txn([mod_is(kv.key, kv.mod_revision)], ops).succeeded


def collect(board: Board, keep: float, dry_run: bool = False, now: float | None = None) -> list[str]:
    """Remove jobs finished more than ``keep`` seconds before ``now`` (default: this clock);
    returns their ids. Each removal is atomic; the whole is not (a crash leaves the rest)."""
    removed = []
    for user, job_id, job in old_jobs(board, keep, now):
        if dry_run or remove_job(board, user, job_id):
            removed.append(job_id)
            if not dry_run:
                log.info("job %s %s removed (finished %s, kept %.0fs)", job_id, job["name"],
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(job["ended"])), keep)
    return removed


def compact(board: Board, every: float = COMPACT_EVERY, force: bool = False,
            now: float | None = None) -> int | None:
    """Compact etcd's history up to the revision recorded ``every`` seconds before ``now`` (so
    watchers a little behind do not have to list again), then record the current one. Returns the
    revision compacted to, or None when it was not time yet. While etcd's NOSPACE alarm is raised
    the record cannot be written (compacting still can): it is left for the next time."""
    store, key = board.store, board.keys.meta("compaction")
    kv = store.get(key)
    now = now or time.time()
    current = store.revision()
    mark = codec.unpack(kv.value) if kv else {}
    if kv is not None and not force and now - mark.get("at", 0) < every:
        return None
    target = current if force else mark.get("revision")
    if target:
        store.compact(target)
        log.info("etcd history compacted to revision %d", target)
    compare = [mod_is(key, kv.mod_revision)] if kv else []
    try:
        store.txn(compare, [Put(key, codec.pack({"revision": current, "at": now}))])
    except NoSpace:
        log.info("compaction not recorded: etcd is out of space (NOSPACE alarm)")
    return target


def sweep(board: Board, keep: float, every: float, clock: Clock) -> bool:
    """The sweeper's retention chore: remove old jobs and compact, judged on the reference time.
    A node whose clock is skewed or not judged yet does nothing and returns False (its clock
    logs why, once)."""
    now = clock.chore_time()
    if now is None:
        return False
    collect(board, keep, now=now)
    compact(board, every=every, now=now)
    return True
