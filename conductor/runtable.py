"""What one node is running, behind one lock: runs, claims in flight, slots in use, jobs to settle.

The claim loop, the finisher, the keeper and the supervisor's event thread all read and change it;
no other object holds any of this. ``changes`` grows on every change the claim loop may care about
(a slot freed), so it can wait for one without polling.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .executor import Run


def slots_of(task: dict) -> int:
    return int((task.get("needs") or {}).get("slots", 1))


class RunTable:
    def __init__(self, slots: int):
        self.slots = slots
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

    def ended(self, run: "Run") -> None:
        """The run's process is gone: its slots are free (the run stays until its outcome commits)."""
        with self._lock:
            self._used -= slots_of(run.claimed.task)
            self._handles.pop(run.handle, None)
            self.freed += 1

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
