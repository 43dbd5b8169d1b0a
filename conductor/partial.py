"""Jobs whose post died half-way: find them by their ``pending/<job>`` marker and remove them.

A big job is posted in chunks (see :meth:`conductor.board.Board.post`): its first chunk writes
``pending/<job>``, and the transaction that writes the job's head deletes it. A marker that stays
while the job key does not exist means the poster died (or was killed) between the two: its task
and layer keys are invisible (no job key names them) and would stay forever. :func:`collect`,
called by the sweeper, removes them.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import codec, ids
from .ops import Delete, Op, absent, mod_is

if TYPE_CHECKING:
    from .seams import Stored as Board

log = logging.getLogger("conductor.partial")

GRACE = 600.0  # seconds a post may take before its keys are taken for a dead poster's


def job_key_ops(board: "Board", user: str, job_id: str) -> list[Op]:
    """Range deletes of every key a post writes before its head: chunks, tasks, layers and
    pause markers (job ids have a fixed length, so ``<job>`` as a prefix names only this job's ids)."""
    k = board.keys
    return [Delete.prefix(k.task(user, job_id + ".")), Delete.prefix(k.layer(user, job_id + ".")),
            Delete.prefix(k.chunks(user, job_id + ".")),
            Delete.prefix(k.paused(user, job_id)), Delete(k.pending(user, job_id))]


def remove(board: "Board", user: str, job_id: str) -> bool:
    """Delete every key of a job whose job key does not exist, in one transaction that checks it
    still does not (a post finishing meanwhile keeps its job). Best effort: returns whether the
    keys were removed; never raises."""
    try:
        res = board.store.txn([absent(board.keys.job(user, job_id))], job_key_ops(board, user, job_id))
    except Exception as exc:  # the sweeper (or collect) tries again later
        log.warning("could not remove what the post of job %s wrote: %s", job_id, exc)
        return False
    return res.succeeded


def collect(board: "Board", grace: float = GRACE) -> list[str]:
    """Remove the keys of every job whose pending marker is older than ``grace`` seconds and
    whose job key does not exist; returns their ids. A marker whose job exists (its head landed
    after a second post of the same id wrote it) is deleted alone. Each job is removed in one
    transaction; raises StoreError only when the markers cannot be listed."""
    removed: list[str] = []
    now = time.time()
    for kv in board.store.iter_prefix(board.keys.pending()):
        user, job_id = board.keys.strip(kv.key).split("/")[1:3]
        marker = codec.unpack(kv.value)
        born = max(float(marker.get("at") or 0), _id_time(job_id))  # the later: never too early
        if not isinstance(user, str) or now - born < grace:
            continue
        if board.store.get(board.keys.job(user, job_id)) is not None:
            board.store.txn([mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
        elif remove(board, user, job_id):
            log.warning("removed job %s of %s: its post died before the job was written", job_id, user)
            removed.append(job_id)
    return removed


def _id_time(job_id: str) -> float:
    try:
        return ids.job_id_time(job_id)
    except ValueError:
        return 0.0
