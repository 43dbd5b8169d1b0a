"""What one node is running, behind one lock: runs, claims in flight, slots in use, jobs to settle.

The claim loop, the finisher, the keeper and the supervisor's event thread all read and change it;
no other object holds any of this. ``changes`` grows on every change the claim loop may care about
(a slot freed), so it can wait for one without polling.

Short and long layers (the default slots, docs/design.md "Slots"): a node has ``slots`` for tasks
of layers whose last task here ran at most SHORT seconds, but at most ``long_slots`` (its CPU count)
for tasks of any other layer (long, or not seen yet). Short tasks (process start, an etcd round
trip, I/O) are then not throttled by the CPU count, and long ones, CPU-bound or not, run no more
at once than before. With an explicit ``--slots`` both are the same and the rule does nothing.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .executor import Run

SHORT = 1.0  # seconds: a task that ran at most this long makes its layer short
SHORT_MEMO = 10_000  # most layers remembered as short (then the oldest are forgotten)


def slots_of(task: dict) -> int:
    return int((task.get("needs") or {}).get("slots", 1))


class RunTable:
    def __init__(self, slots: int, long_slots: int | None = None):
        self.slots = slots
        self.long_slots = min(slots, long_slots or slots)
        self._short: dict[str, None] = {}  # layers whose last task here was short (oldest first)
        self._long: set[str] = set()  # runs that hold long slots (their layer was not short)
        self._long_used = 0
        self._lock = threading.Lock()
        self._runs: dict[str, "Run"] = {}  # task id -> its run on this node
        self._handles: dict[str, "Run"] = {}  # supervisor handle -> run
        self._inflight: set[str] = set()  # being claimed right now (not strays)
        self._used = 0
        self._to_settle: set[tuple[str, str]] = set()
        self.freed = 0  # slots freed so far (the claim loop waits for this to move)

    # ---- slots and claims ---------------------------------------------------------------------------

    def free(self) -> int:
        with self._lock:
            return self.slots - self._used

    def long_free(self) -> int:
        """Slots free for tasks of layers not known to be short."""
        with self._lock:
            return min(self.slots - self._used, self.long_slots - self._long_used)

    def long_idle(self) -> bool:
        """No long task runs: one that needs more than ``long_slots`` may take the node."""
        with self._lock:
            return self._long_used == 0

    def is_short(self, layer: str) -> bool:
        return layer in self._short  # one dict lookup, atomic under the GIL

    def begin_claim(self, task_ids: Iterable[str]) -> None:
        with self._lock:
            self._inflight.update(task_ids)

    def end_claim(self, task_ids: Iterable[str]) -> None:
        with self._lock:
            self._inflight.difference_update(task_ids)

    def holds(self, task_id: str) -> bool:
        """Is the task running here or being claimed by this node right now?"""
        with self._lock:
            return task_id in self._runs or task_id in self._inflight

    def busy(self) -> bool:
        with self._lock:
            return bool(self._runs or self._inflight)

    # ---- runs ---------------------------------------------------------------------------------------

    def alive(self) -> int:
        """How many of this node's runs still have a process (so may end soon)."""
        with self._lock:
            return len(self._handles)

    def add(self, run: "Run") -> None:
        with self._lock:
            self._runs[run.id] = run
            self._handles[run.handle] = run
            self._used += slots_of(run.claimed.task)
            if run.claimed.task["layer"] not in self._short:
                self._long.add(run.id)
                self._long_used += slots_of(run.claimed.task)

    def ended(self, run: "Run", seconds: float | None = None) -> None:
        """The run's process is gone, after ``seconds`` (None: unknown): its slots are free (the run
        stays until its outcome commits), and its layer is short or long from now on."""
        layer = run.claimed.task["layer"]
        with self._lock:
            self._used -= slots_of(run.claimed.task)
            self._handles.pop(run.handle, None)
            if run.id in self._long:
                self._long.discard(run.id)
                self._long_used -= slots_of(run.claimed.task)
            self.freed += 1
            if seconds is not None and seconds <= SHORT:
                self._short.pop(layer, None)
                self._short[layer] = None
                if len(self._short) > SHORT_MEMO:
                    del self._short[next(iter(self._short))]
            elif seconds is not None:
                self._short.pop(layer, None)

    def remove(self, run: "Run") -> None:
        with self._lock:
            if self._runs.get(run.id) is run:
                del self._runs[run.id]

    def get(self, task_id: str) -> "Run | None":
        with self._lock:
            return self._runs.get(task_id)

    def by_handle(self, handle: str) -> "Run | None":
        with self._lock:
            return self._handles.get(handle)

    def runs(self) -> list["Run"]:
        with self._lock:
            return list(self._runs.values())

    # ---- settling -----------------------------------------------------------------------------------

    def settle_later(self, job: str, user: str) -> None:
        with self._lock:
            self._to_settle.add((job, user))

    def take_settles(self) -> set[tuple[str, str]]:
        with self._lock:
            out, self._to_settle = self._to_settle, set()
            return out
