"""A node's gate for concurrency keys and rate limits: which ready tasks its claim loop may take.

The rules are in :mod:`conductor.concurrency` and :mod:`conductor.ratelimit`; this module holds a
node's live view of their keys and the hooks the claim loop calls:

* Two list-then-watch followers keep the taken slots (``conc/``) and the rate logs (``rates/``).
  Any change there wakes the claim loop (a freed slot is a chance to claim), so a task waiting for
  a key is retried when a slot frees, never by polling; a task waiting for a rate window is retried
  by a timer set for the instant the window allows.
* :meth:`Gate.admit` (from the claim loop's acceptor) says whether a task may join the batch
  being picked, and plans its slot number; :meth:`Gate.mark` and :meth:`Gate.txn_parts` put the
  slot and the rate log into the claim's one transaction. The view is only a hint: the
  transaction's compares make every grant exact, and a stale view only makes a claim fail and be
  tried again.
* A task refused because its key is full may act on it (its ``strategy``): ``cancel-newest`` skips
  the newcomer at once (one transaction that also checks every slot is still taken),
  ``cancel-in-progress`` asks the holders posted before it to stop (a skip request, the path
  ``conductor skip`` takes). Those run on a worker thread, never in the claim loop.
"""
from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable

from . import concurrency, lifecycle, model, ratelimit
from .claims import decision_ops
from .concurrency import Holder
from .control import Control, Target
from .errors import ConductorError
from .follow import FollowHandler
from .ops import KV, Compare, Event, Op, mod_is, present
from .ratelimit import Log

if TYPE_CHECKING:
    from .parts import Node

log = logging.getLogger("conductor.node")


class _View(FollowHandler):
    """One followed prefix, applied under the gate's lock; every change wakes the claim loop."""

    def __init__(self, gate: "Gate", apply: Callable[[str, KV | None], None]):
        self.gate = gate
        self.apply = apply
        self.revision = 0
        self.live = False

    def reset(self, kvs: list[KV], revision: int) -> None:
        with self.gate.lock:
            self.apply("", None)  # forget everything
            for kv in kvs:
                self.apply(kv.key, kv)
            self.revision, self.live = revision, True
        self.gate.wake()

    def events(self, events: list[Event], revision: int) -> None:
        with self.gate.lock:
            for ev in events:
                self.apply(ev.kv.key, ev.kv if ev.kind == "put" else None)
            self.revision = max(self.revision, revision)
        self.gate.wake()

    def synced(self, flag: bool) -> None:
        with self.gate.lock:
            self.live = flag and self.live
        if flag:
            self.gate.wake()

    def failed(self, exc: BaseException) -> None:
        self.gate.on_failure(exc)


class Gate:
    def __init__(self, node: "Node"):
        self.node = node
        self.keys = node.keys
        self.lock = threading.Lock()
        self.on_failure: Callable[[BaseException], None] = lambda exc: log.error("gate view failed", exc_info=exc)
        self.slots: dict[str, dict[int, Holder]] = defaultdict(dict)
        self.logs: dict[str, Log] = {}
        self.slot_view = _View(self, self._apply_slot)
        self.rate_view = _View(self, self._apply_log)
        self._followers: list[Any] = []
        self._batch_slots: dict[str, dict[str, int]] = {}  # key -> {task: slot} planned in this pick
        self._batch_starts: dict[str, list[float]] = {}  # rate key -> starts planned in this pick
        self._batch_logs: dict[str, Log] = {}  # rate key -> the log those starts were judged against
        self._claim_at = 0.0  # the time the claim being committed records
        self._timer: threading.Timer | None = None
        self._timer_at = 0.0
        self._actions: queue.Queue[tuple[tuple[str, int], Callable[[], None]] | None] = queue.Queue()
        self._acted: set[tuple[str, int]] = set()  # (task, revision) already acted on

    # ---- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        store = self.node.store
        self._followers = [store.follow(self.keys.conc(), self.slot_view, name="conc"),
                           store.follow(self.keys.rate(), self.rate_view, name="rates")]
        threading.Thread(target=self._act, name="gate", daemon=True).start()

    def stop(self) -> None:
        for follower in self._followers:
            follower.stop()
        if self._timer:
            self._timer.cancel()
        self._actions.put(None)

    def wake(self) -> None:
        """Wake the claim loop: something it waits for may have changed."""
        cache = self.node.cache
        with cache.cond:
            cache.changes += 1
            cache.cond.notify_all()

    # ---- views ----------------------------------------------------------------------------------

    def _apply_slot(self, key: str, kv: KV | None) -> None:
        if not key:
            self.slots.clear()
            return
        rest = self.keys.strip(key)[len("conc/"):]
        name, _, n = rest.rpartition("/")
        if not n.isdigit():
            return
        if kv is None:
            self.slots[name].pop(int(n), None)
            if not self.slots[name]:
                del self.slots[name]
            return
        holder = concurrency.parse_holder(self.keys, kv.key, kv.value, kv.create_revision)
        if holder is not None:
            self.slots[name][holder.n] = holder

    def _apply_log(self, key: str, kv: KV | None) -> None:
        if not key:
            self.logs.clear()
            return
        name = self.keys.strip(key)[len("rates/"):]
        if kv is None:
            self.logs.pop(name, None)
        else:
            self.logs[name] = Log.parse(kv.value, kv.mod_revision)

    # ---- the claim loop's hooks -------------------------------------------------------------------

    def begin(self) -> None:
        """A new pick starts: forget what the last one planned."""
        self._batch_slots = {}
        self._batch_starts = {}
        self._batch_logs = {}

    def admit(self, task: dict[str, Any]) -> bool:
        """May ``task`` join the batch being picked? Plans its slot and start when it may."""
        conc, rate = task.get("concurrency"), task.get("rate")
        if not conc and not rate:
            return True
        with self.lock:
            if not (self.slot_view.live and self.rate_view.live):
                return False
            if rate and not self._rate_open(rate):
                return False
            if conc and not self._slot_free(task, conc):
                return False
        if rate:
            self._batch_starts.setdefault(rate["key"], []).append(time.time())
        return True

    def _rate_open(self, rate: dict[str, Any]) -> bool:
        # the claim compares the log it was judged against, not whatever the watch brings meanwhile
        found = self._batch_logs.setdefault(rate["key"], self.logs.get(rate["key"]) or Log())
        starts = found.starts + self._batch_starts.get(rate["key"], [])
        when = ratelimit.earliest(starts, rate["limit"], rate["per"])
        if time.time() >= when:
            return True
        self._wake_at(when)
        return False

    def _slot_free(self, task: dict[str, Any], conc: dict[str, Any]) -> bool:
        key, limit = conc["key"], conc["limit"]
        held = {n: h for n, h in self.slots.get(key, {}).items() if n < limit}
        planned = self._batch_slots.setdefault(key, {})
        n = concurrency.free_slot([*held, *planned.values()], limit)
        if n is None:
            if len(held) >= limit:  # full as committed, not only by this batch: the strategy acts
                self._full(task, conc, list(held.values()))
            return False
        planned[task["id"]] = n
        return True

    def mark(self, task: dict[str, Any]) -> None:
        """Write the planned slot number into the RUNNING value the claim writes."""
        task.pop("conc_slot", None)
        conc = task.get("concurrency")
        if conc:
            n = self._batch_slots.get(conc["key"], {}).get(task["id"])
            if n is not None:
                task["conc_slot"] = n

    def txn_parts(self, tasks: list[dict[str, Any]], lease: int, at: float) -> tuple[list[Compare], list[Op]]:
        """The claim's compares and writes for the slots and rate logs of ``tasks`` (claimed at ``at``)."""
        compare: list[Compare] = []
        ops: list[Op] = []
        self._claim_at = at
        added: dict[str, list[float]] = defaultdict(list)
        keep: dict[str, float] = defaultdict(float)
        limit: dict[str, int] = {}
        for task in tasks:
            more_compare, more_ops = concurrency.take_ops(self.keys, task, self.node.name, lease, at)
            compare += more_compare
            ops += more_ops
            rate = task.get("rate")
            if rate:
                key = rate["key"]
                if not ratelimit.allowed(self._batch_logs[key].starts + added[key], rate["limit"], rate["per"], at):
                    compare.append(Compare(self.keys.rate(key), "mod", "<", 0))  # cannot be: the claim fails
                added[key].append(at)
                keep[key] = max(keep[key], rate["per"])
                limit[key] = rate["limit"]
        for key, starts in added.items():
            rate_compare, rate_ops = self._batch_logs[key].txn_parts(self.keys, key, starts, keep[key], limit[key])
            compare += rate_compare
            ops += rate_ops
        return compare, ops

    def committed(self, revision: int) -> None:
        """The claim committed at ``revision``: until the watch brings them, the next pick must not
        count on the slots and logs as they were (it would only fail its transaction)."""
        with self.lock:
            for key, planned in self._batch_slots.items():
                if self.slot_view.revision < revision:
                    for task_id, n in planned.items():
                        self.slots[key][n] = Holder(key, n, task_id, "", self.node.name, time.time(), revision)
            if self.rate_view.revision < revision:
                for key, starts in self._batch_starts.items():
                    old = self._batch_logs[key]
                    self.logs[key] = Log(old.starts + [self._claim_at] * len(starts), revision, old.keep, old.limit)
        self.begin()

    # ---- timers and strategies ------------------------------------------------------------------

    def _wake_at(self, when: float) -> None:
        """Wake the claim loop at ``when`` (a rate window opens); one timer, for the earliest."""
        if self._timer is not None and self._timer.is_alive() and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = threading.Timer(max(0.0, when - time.time()) + 0.002, self.wake)
        self._timer.daemon = True
        self._timer.start()

    def _full(self, task: dict[str, Any], conc: dict[str, Any], held: list[Holder]) -> None:
        strategy = conc.get("strategy", "queue")
        if strategy == "cancel-newest":
            self._once(task["id"], 0, functools.partial(self._skip_newcomer, task, conc, held))
        elif strategy == "cancel-in-progress":
            for h in held:
                # only holders of jobs posted before the newcomer's (job ids sort by posting time)
                if h.task.split(".")[0] < task["job"] and h.user:
                    self._once(h.task, h.create_revision, functools.partial(self._stop_holder, h, task, conc))

    def _once(self, task_id: str, revision: int, action: Callable[[], None]) -> None:
        if (task_id, revision) in self._acted:
            return
        if len(self._acted) > 10_000:
            self._acted.clear()
        self._acted.add((task_id, revision))
        self._actions.put(((task_id, revision), action))

    def _act(self) -> None:
        while True:
            item = self._actions.get()
            if item is None:
                return
            done, action = item
            try:
                action()
            except ConductorError as exc:  # etcd away or the task moved on: the next refusal acts again
                log.warning("concurrency strategy not applied: %s", exc)
                self._acted.discard(done)
            except Exception as exc:  # noqa: BLE001 - a bug: the node stops loudly (node._crashed)
                self.on_failure(exc)
                return

    def _skip_newcomer(self, task: dict[str, Any], conc: dict[str, Any], held: list[Holder]) -> None:
        """cancel-newest: SKIPPED at once, in one transaction that checks the task is still as
        queued and every slot of the key still taken (so a slot freed meanwhile lets it run)."""
        node, k = self.node, self.keys
        found = node.board.load_task(task["user"], task["id"])  # keyless until claimed or changed
        if found is None or found[0]["state"] != "QUEUED":
            return
        current, kv = found
        who = ", ".join(h.task for h in held[:3])
        by = (f"{node.name} (cancel-newest: concurrency key {conc['key']} was full, {len(held)} of "
              f"{conc['limit']} held by {who})")
        decision = lifecycle.decide_skip(current, by, model.now())
        guard = [mod_is(kv.key, kv.mod_revision)] + [present(k.conc(conc["key"], n)) for n in range(conc["limit"])]
        if node.claims.side.txn(guard, decision_ops(k, decision), decision).succeeded:
            log.info("task %s SKIPPED: concurrency key %s full (cancel-newest)", task["id"], conc["key"])
            node.board.settle(task["job"], task["user"], node=node.name)
        else:
            self._acted.discard((task["id"], 0))

    def _stop_holder(self, holder: Holder, newcomer: dict[str, Any], conc: dict[str, Any]) -> None:
        """cancel-in-progress: ask the node running ``holder`` to stop it (SKIPPED)."""
        by = f"{self.node.name} (cancel-in-progress: task {newcomer['id']} wants concurrency key {conc['key']})"
        log.info("task %s: stopping it for %s (cancel-in-progress on %s)", holder.task, newcomer["id"], conc["key"])
        Control(self.node.board, by).stop(Target("task", holder.task, holder.user), "skip", grace=5.0)

