"""How many tasks of a job run now and ended in each final state, kept as a few counter keys per job.

A job's counts live under ``users/<user>/counts/<job>/<writer>``: one key per writer, each holding
``{layer number: {state: n}}`` for RUNNING and the final states (COMPLETED, ERRORED, SKIPPED). The
writer is a node's lease (its finish loop, the only thread that writes that key, keeps the value
and the revision it last wrote, and compares that revision), the lease + ``c`` (its claim loop:
+1 RUNNING per claim), or a one-off action (a user's kill or retry, a recovery, a deadline). A
finish writes -1 RUNNING and +1 in its final state, a retry -1 in the state it leaves. One writer's
part may be negative (one node claims, another recovers); the counts of a job are the sum over
its keys: a handful of small values, whatever the job's size.

Why not one key per finished task: that was one more key write per task. Here a finish
transaction of a batch writes one counter put per job it touches. What a task becomes is still
written in its own key; these keys only count.

Every write returns the ops and compares for the caller's one transaction (a count changes in the
same transaction as the task it counts); nothing here writes on its own.
"""
from __future__ import annotations

import secrets
import threading
from typing import TYPE_CHECKING, Callable, Iterable, Protocol

from . import codec, states
from .keys import Keys
from .model import Value
from .ops import Compare, Op, Put, TxnResult, absent, mod_is

if TYPE_CHECKING:
    from .store import Store

FINAL = (states.COMPLETED, states.ERRORED, states.SKIPPED)
COUNTED = (states.RUNNING, *FINAL)
Delta = dict[str, dict[str, int]]  # layer number -> state -> change


def layer_number(layer_id: str) -> str:
    """``<job>.<n>`` -> ``n`` (the key a counter value files a layer under)."""
    return layer_id.rsplit(".", 1)[1]


def change(task: Value, tally: str | None, untally: str | None) -> Delta:
    """The change a decision makes to its job's counts: +1 in its new counted state (RUNNING or
    final), -1 in the counted state it leaves (a finish leaves RUNNING, a retry a final state)."""
    out: Delta = {}
    n = layer_number(task["layer"])
    for state, step in ((tally, 1), (untally, -1)):
        if state in COUNTED:
            per = out.setdefault(n, {})
            per[state] = per.get(state, 0) + step
    return out


def merge(into: Delta, more: Delta) -> Delta:
    """Add ``more`` to ``into`` (in place; returns it), dropping zeros."""
    for n, per in more.items():
        mine = into.setdefault(n, {})
        for state, step in per.items():
            mine[state] = mine.get(state, 0) + step
            if not mine[state]:
                del mine[state]
        if not mine:
            del into[n]
    return into


def total(values: Iterable[bytes]) -> Delta:
    """The counts of a job: the sum of its counter values (bad values are skipped: counts only)."""
    out: Delta = {}
    for raw in values:
        try:
            value = codec.unpack(raw)
        except Exception:  # noqa: BLE001 - a value Conductor did not write counts for nothing
            continue
        if isinstance(value, dict):
            merge(out, {str(n): {s: int(c) for s, c in per.items() if s in COUNTED and isinstance(c, int)}
                        for n, per in value.items() if isinstance(per, dict)})
    return out


def of_layer(counts: Delta, layer_id: str) -> dict[str, int]:
    """A layer's counts by state (RUNNING and the final states; never below 0 to a reader)."""
    return {s: max(0, counts.get(layer_number(layer_id), {}).get(s, 0)) for s in COUNTED}


def of_job(counts: Delta) -> dict[str, int]:
    return {s: max(0, sum(per.get(s, 0) for per in counts.values())) for s in COUNTED}


def action_ops(keys: Keys, deltas: dict[tuple[str, str], Delta]) -> list[Op]:
    """The counter writes of a one-off action: a fresh key per (user, job) it changed."""
    return [Put(keys.count(user, job, "a" + secrets.token_hex(6)), codec.pack(delta))
            for (user, job), delta in deltas.items() if delta]


class Counters:
    """A node's own counter keys (writer = its lease), as last written, for its finish loop.

    Not thread-safe on purpose: one thread (the finish loop) owns it. A write is built from the
    value and revision last committed; :meth:`committed` records the new ones once the
    transaction succeeded, :meth:`forget` drops one whose compare failed (read again next time)."""

    def __init__(self, keys: Keys, read: Callable[[str], tuple[bytes, int] | None], limit: int = 2000):
        self.keys = keys
        self._read = read
        self._known: dict[str, tuple[Delta, int]] = {}
        self._limit = limit

    def ops(self, user: str, job: str, writer: str, delta: Delta) -> tuple[list[Compare], list[Op], Delta]:
        """(compares, ops, new value) that add ``delta`` to this writer's key of ``job``."""
        key = self.keys.count(user, job, writer)
        value, revision = self._current(key)
        new = merge({n: dict(per) for n, per in value.items()}, delta)
        compare = [mod_is(key, revision) if revision else absent(key)]
        return compare, [Put(key, codec.pack(new))], new

    def committed(self, user: str, job: str, writer: str, value: Delta, revision: int) -> None:
        if len(self._known) >= self._limit:  # jobs long ended: read again if they ever count more
            self._known.pop(next(iter(self._known)))
        self._known[self.keys.count(user, job, writer)] = (value, revision)

    def forget(self, user: str, job: str, writer: str) -> None:
        self._known.pop(self.keys.count(user, job, writer), None)

    def _current(self, key: str) -> tuple[Delta, int]:
        if key not in self._known:
            found = self._read(key)
            self._known[key] = (total([found[0]]), found[1]) if found else ({}, 0)
        return self._known[key]


class Counted(Protocol):
    """What a change must say to be counted (a :class:`conductor.lifecycle.Decision` does)."""

    @property
    def task(self) -> Value: ...

    @property
    def tally(self) -> str | None: ...

    @property
    def untally(self) -> str | None: ...


class Writer:
    """One counter key per job for a run of one-off changes (a user's action over many tasks, a
    node's recoveries, deadlines and gate decisions), so that they add up in one key instead of one
    key each. Thread-safe: the transaction runs under a lock (these writes are rare)."""

    def __init__(self, store: "Store", keys: Keys, name: Callable[[], str]):
        self.store = store
        self.name = name
        self.counters = Counters(keys, self._read)
        self._lock = threading.Lock()

    def _read(self, key: str) -> tuple[bytes, int] | None:
        kv = self.store.get(key)
        return (kv.value, kv.mod_revision) if kv else None

    def txn(self, compare: list[Compare], ops: list[Op], decision: Counted) -> TxnResult:
        """One transaction: ``ops`` (a decision's writes, without counts) and what the decision
        changes in its job's counts, added to this writer's key of the job."""
        task = decision.task
        user, job = task["user"], task["job"]
        delta = change(task, decision.tally, decision.untally)
        if not delta:
            return self.store.txn(compare, ops)
        with self._lock:
            name = self.name()
            count_compare, count_ops, value = self.counters.ops(user, job, name, delta)
            res = self.store.txn(compare + count_compare, ops + count_ops)
            if res.succeeded:
                self.counters.committed(user, job, name, value, res.revision)
            else:
                self.counters.forget(user, job, name)
            return res
