"""A node's live copy of the ``q/`` stream: what it may claim (:mod:`conductor.queued`: running
layers' chunks and queued task keys), RUNNING tasks (the claims: who runs what, on which lease),
live leases, kill requests, pause markers.

Keys are ``q/<kind>/<user>/<id>`` and ``q/u/<user>/<kind>/<id>``; the owner is taken from the path
(what etcd's access control checked), and a value that names another owner is ignored. Final
tasks are not kept: a node's memory follows what can be claimed and what runs.

Fed by one list-then-watch (:meth:`Store.follow`), so after handling the events of revision R the
cache is exactly the stream's state at R. Two things rest on that:

* **Orphans**: a finish rewrites a RUNNING task final; a lease's end deletes its
  ``q/alive/<lease>`` key (etcd deletes it with the lease). A RUNNING task whose lease has no
  alive key after a revision is an orphan, reported to ``on_orphan`` (and again on every full
  listing, so a missed event is repaired).
* **Layer drained**: after its finish at revision R, a node waits until the cache has reached R;
  if it then sees no queued and no running task of the layer, the layer may be finished (the
  settle itself checks the job's counts). Whoever commits the last finish of a layer sees that,
  so no layer is left unfinished.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from . import codec
from .keys import Keys
from .ops import KV, Event
from .follow import FollowHandler
from .queued import Queued

log = logging.getLogger("conductor.cache")


def layer_of(task_id: str) -> str:
    return task_id.rsplit(".", 1)[0]


@dataclass(frozen=True)
class ClaimInfo:
    """A RUNNING task as the cache holds it: who runs it, on which lease, and the revision the
    cache first saw it RUNNING on that lease (the claim's, unless the listing came later)."""

    node: str
    lease: int
    create_revision: int
    user: str = ""


def _lease(text: str) -> int:
    """A lease id from the hex of an alive key's path; 0 (no live lease) for anything else."""
    try:
        return int(text, 16)
    except ValueError:
        return 0


def owned(user: str, some_id: str) -> str:
    """How the cache names a pause marker or kill request: ``<user>/<id>``, since only the key's
    path says whose it is (a user may write any id under their own prefix, never under another's)."""
    return f"{user}/{some_id}"


class Cache(FollowHandler):
    def __init__(self, keys: Keys, on_orphan: Callable[[str, str, int], None] | None = None,
                 on_kill: Callable[[str, str, dict], None] | None = None):
        self.keys = keys
        self.on_orphan = on_orphan or (lambda user, task, lease: None)
        self.on_kill = on_kill or (lambda user, task, request: None)
        self.on_failure: Callable[[BaseException], None] = lambda exc: log.error("stream failed", exc_info=exc)
        # each ready task as it arrives, under this cache's lock (deadlines.py sets its timers)
        self.on_ready: Callable[[dict], None] = lambda task: None
        self.cond = threading.Condition()
        self.queued = Queued(lambda task: self.on_ready(task))
        self.ready = self.queued.ready
        self.runs: dict[str, ClaimInfo] = {}  # task -> its claim (the task is RUNNING)
        self.alive: set[int] = set()  # the leases whose alive key exists
        self.paused: set[str] = set()  # owned(user, id) of every pause marker
        self.runs_by_layer: Counter[str] = Counter()
        self._suspects: set[str] = set()  # keyless tasks a claim found taken, until the next events
        self.kills: dict[str, dict] = {}  # owned(user, task) -> kill request
        self.revision = 0
        self.is_synced = False
        self.changes = 0  # bumped on every change a claim loop may care about
        self._prefix = keys.stream()
        self._bad: set[str] = set()  # keys whose values were not ours (said once)

    # ---- FollowHandler ---------------------------------------------------------------------------

    def reset(self, kvs: list[KV], revision: int) -> None:
        with self.cond:
            self.queued.clear()
            self.runs.clear()
            self.alive.clear()
            self.paused.clear()
            self.runs_by_layer.clear()
            self.kills.clear()
            self._suspects.clear()
            for kv in kvs:
                self._apply_put(kv)
            self.queued.refresh_all()
            self.revision = revision
            self.is_synced = True
            self.changes += 1
            orphans = self._orphans()
            self.cond.notify_all()
        log.debug("stream listed at revision %d: %d ready, %d running", revision, len(self.ready), len(self.runs))
        for user, task, lease in orphans:
            self.on_orphan(user, task, lease)

    def events(self, events: list[Event], revision: int) -> None:
        ended: set[int] = set()
        with self.cond:
            for ev in events:
                if ev.kind == "put":
                    self._apply_put(ev.kv)
                else:
                    gone = self._apply_delete(ev.kv.key)
                    if gone is not None:
                        ended.add(gone)
            self.queued.settle()
            self._suspects.clear()
            self.revision = max(self.revision, revision)
            self.changes += 1
            orphans = [(c.user, t, c.lease) for t, c in self.runs.items() if c.lease in ended] if ended else []
            self.cond.notify_all()
        for user, task, lease in orphans:
            self.on_orphan(user, task, lease)

    def synced(self, flag: bool) -> None:
        with self.cond:
            if not flag:
                self.is_synced = False
            self.cond.notify_all()

    # ---- applying events ---------------------------------------------------------------------------

    def _apply_put(self, kv: KV) -> None:
        """Apply a put. A value that is not what Conductor writes (a user's etcdctl, say) is
        skipped and said once per key: the stream is everybody's, a node must not fall over it."""
        kind, user, name = self.keys.split_stream(kv.key)
        try:
            value = codec.unpack(kv.value) if kv.value else {}
            self._put(kind, user, name, kv, value)
        except Exception as exc:  # noqa: BLE001 - bad data, not a bug of ours
            if kv.key not in self._bad:
                self._bad.add(kv.key)
                log.warning("ignoring %s: not a value Conductor wrote (%s)", kv.key, exc)

    def _put(self, kind: str, user: str, name: str, kv: KV, value: dict) -> None:
        if kind == "tasks":
            self._task(user, name, kv, value)
        elif kind == "layers":
            if value.get("id") != name or value.get("user") != user or not isinstance(value.get("job"), str):
                raise ValueError("a layer key must hold its layer")
            self.queued.layer(name, value)
        elif kind == "jobs":
            self.queued.job(name, True)
        elif kind == "chunks":
            layer_id, _, first = name.partition("/")
            self.queued.chunk(layer_id, int(first), kv.value)
        elif kind == "alive":
            self.alive.add(_lease(user))
        elif kind == "paused":
            self.paused.add(owned(user, name))
        elif kind == "kills":
            self.kills[owned(user, name)] = value
            self.on_kill(user, name, value)

    def _task(self, user: str, name: str, kv: KV, value: dict) -> None:
        """A task's new value: queued (claimable), running (a claim), or neither (forgotten)."""
        if value.get("id") != name or not isinstance(value.get("job"), str) \
                or not isinstance(value.get("layer"), str) or not isinstance(value.get("priority", 0), int):
            raise ValueError("a task key must hold its task")
        if value.get("user") != user:  # the path is what etcd's access control checked
            raise ValueError(f"a task under {user!r} names another owner")
        self.queued.task(name, value, kv)  # queued (kept packed: see Ready), or no longer
        if value.get("state") != "RUNNING":
            self._unrun(name)
            return
        lease = _lease(str(value.get("lease", "")))
        known = self.runs.get(name)
        if known is None:
            self.runs_by_layer[layer_of(name)] += 1
        elif known.lease == lease:  # a user's change of a running task: the claim stays as it was
            return
        self.runs[name] = ClaimInfo(str(value.get("node", "?")), lease, kv.mod_revision, user)

    def _unrun(self, name: str) -> None:
        if self.runs.pop(name, None) is not None:
            self._dec(self.runs_by_layer, layer_of(name))

    def _apply_delete(self, key: str) -> int | None:
        """Apply a delete; for a deleted alive key return its lease (its RUNNING tasks are orphans)."""
        kind, user, name = self.keys.split_stream(key)
        if kind == "tasks":
            self.queued.task(name, None)
            self._unrun(name)
        elif kind == "layers":
            self.queued.layer(name, None)
        elif kind == "jobs":
            self.queued.job(name, False)
        elif kind == "chunks":
            layer_id, _, first = name.partition("/")
            if first.isdigit():
                self.queued.chunk(layer_id, int(first), None)
        elif kind == "alive":
            lease = _lease(user)
            self.alive.discard(lease)
            return lease
        elif kind == "paused":
            self.paused.discard(owned(user, name))
        elif kind == "kills":
            self.kills.pop(owned(user, name), None)
        return None

    @staticmethod
    def _dec(counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]

    # ---- questions ---------------------------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """Applying the stream failed (a bug): the node cannot go on with a wrong view."""
        self.on_failure(exc)

    def poke(self) -> None:
        """Wake whoever waits on the cache (a slot freed, the node is stopping)."""
        with self.cond:
            self.cond.notify_all()

    def drop(self, stale: dict[str, int]) -> None:
        """Forget queued entries found stale by a failed claim ({task: the revision the claim
        compared}), each only if the cache still holds that revision of it: a newer one (the task
        queued again while the claim was on its way) is live, and no event would bring it back.
        A keyless task (revision 0) found stale has a key by now, or its layer was paused: it
        is not offered again until the next events say which."""
        with self.cond:
            for tid, revision in stale.items():
                if revision:
                    self.queued.drop(tid, revision)
                else:
                    self._suspects.add(tid)

    def suspect(self, task_id: str) -> bool:
        """Did a claim find this keyless task taken, with no event since to say by whom?"""
        return task_id in self._suspects

    def wait_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the cache has applied ``revision``; False if it is not live or time ran out."""
        with self.cond:
            return self.cond.wait_for(lambda: self.is_synced and self.revision >= revision, timeout)

    def layer_busy(self, layer_id: str) -> bool:
        """Has the layer a task that is queued, or running (orphaned or not)?"""
        with self.cond:
            return self.queued.busy(layer_id) or self.runs_by_layer.get(layer_id, 0) > 0

    def _orphans(self) -> list[tuple[str, str, int]]:
        return [(c.user, t, c.lease) for t, c in self.runs.items() if c.lease not in self.alive]

    def orphans(self) -> list[tuple[str, str, int]]:
        """(user, task, lease) of every RUNNING task whose lease has no alive key."""
        with self.cond:
            return self._orphans()

    def is_paused(self, user: str, some_id: str) -> bool:
        return owned(user, some_id) in self.paused

    def kill_of(self, user: str, task_id: str) -> dict | None:
        """The kill or skip request for a task, if its owner wrote one."""
        with self.cond:
            return self.kills.get(owned(user, task_id))

    def claims_of(self, node: str) -> int:
        with self.cond:
            return sum(1 for c in self.runs.values() if c.node == node)
