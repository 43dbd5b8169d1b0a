"""What a node may claim, kept from its stream: jobs, layers, chunks and task keys in, the
:class:`ReadyQueue` out.

A task is claimable when its layer runs and its job's key exists (the job key is written last, so
nothing of a job nobody can see yet is claimed), and it is either keyless (what its chunk says:
conductor/chunks.py) or its key is QUEUED (or PENDING, a task changed by a user before its layer
started). A running layer's keyless tasks are a :class:`Chunked` in the queue; task keys are
explicit entries, parked while their layer does not run.

Memory: chunks (packed) of every layer that has not ended, the numbers of each such layer's task
keys, the values of layers that have not ended, and the ids of visible jobs. Not thread-safe: the
cache calls it under its lock.
"""
from __future__ import annotations

from typing import Callable

from . import chunks, states
from .claims import Ready
from .model import Value
from .ops import KV
from .readyqueue import Chunked, ReadyQueue

ENDED = frozenset(states.FINAL)


def layer_of(task_id: str) -> str:
    return task_id.rsplit(".", 1)[0]


class Queued:
    def __init__(self, on_ready: Callable[[dict], None]):
        self.ready = ReadyQueue()
        self.on_ready = on_ready  # a queued task with deadlines to watch (deadlines.py)
        self.jobs: set[str] = set()  # ids of job keys that exist
        self.layers: dict[str, Value] = {}  # layers that have not ended
        self._chunks: dict[str, dict[int, tuple[bytes, str | None]]] = {}  # layer -> first -> (raw, token)
        self._keyed: dict[str, set[int]] = {}  # layer -> numbers of its task keys
        self._parked: dict[str, dict[str, Ready]] = {}  # layer -> queued task keys while it does not run
        self._touched: set[str] = set()  # layers to look at again once a revision's events are in
        self.by_layer: dict[str, int] = {}  # explicit entries per layer (queued or parked)

    def clear(self) -> None:
        self.ready.clear()
        for holder in (self.jobs, self.layers, self._chunks, self._keyed, self._parked, self._touched, self.by_layer):
            holder.clear()

    # ---- events -----------------------------------------------------------------------------------

    def job(self, job_id: str, exists: bool) -> None:
        (self.jobs.add if exists else self.jobs.discard)(job_id)
        prefix = job_id + "."
        self._touched.update(lid for lid in self.layers if lid.startswith(prefix))

    def layer(self, layer_id: str, value: Value | None) -> None:
        """A layer's new value (None: deleted). An ended layer's chunks go, and what was known of
        its task keys: every task of it has a key, so run again (a retry) it offers keys only."""
        if value is None or value.get("state") in ENDED:
            self.layers.pop(layer_id, None)
            self._chunks.pop(layer_id, None)
            self._keyed.pop(layer_id, None)
        else:
            self.layers[layer_id] = value
        self._touched.add(layer_id)

    def chunk(self, layer_id: str, first: int, raw: bytes | None) -> None:
        if raw is None:
            self._chunks.get(layer_id, {}).pop(first, None)
            return
        _, specs, token = chunks.read(raw)  # ValueError for a value that is not a chunk
        self._chunks.setdefault(layer_id, {})[first] = (raw, token)
        running = self.ready.chunked(layer_id)
        if running is not None and chunks.committed(token, running.layer):
            self._add(running, first, specs, raw)

    def task(self, task_id: str, value: Value | None, kv: KV | None = None) -> None:
        """A task key's new value (None: deleted): claimable when QUEUED, or PENDING in a running layer."""
        layer_id, _, tail = task_id.rpartition(".")
        if not tail.isdigit():
            return  # not a task id (the cache said so when it was put)
        number = int(tail)
        self._unqueue(task_id)
        if value is None or kv is None:
            self._keyed.get(layer_id, set()).discard(number)
            return
        if layer_id in self.layers:  # an ended layer's numbers are not needed (see layer)
            self._keyed.setdefault(layer_id, set()).add(number)
        running = self.ready.chunked(layer_id)
        if running is not None:
            running.take(number)
        if value.get("state") in (states.QUEUED, states.PENDING):
            entry = Ready(kv.value, kv.mod_revision, task_id)
            self.by_layer[layer_id] = self.by_layer.get(layer_id, 0) + 1
            if running is not None:
                self.ready.put(entry)
                self.on_ready(value)
            else:
                self._parked.setdefault(layer_id, {})[task_id] = entry

    def drop(self, task_id: str, revision: int) -> None:
        """Forget a queued task key found stale by a failed claim, if still at that revision."""
        entry = self.ready.keyed(task_id)
        if entry is not None and entry.mod_revision == revision:
            self._unqueue(task_id)

    def _unqueue(self, task_id: str) -> None:
        layer_id = layer_of(task_id)
        gone = self.ready.remove(task_id) or self._parked.get(layer_id, {}).pop(task_id, None)
        if gone is not None:
            self.by_layer[layer_id] -= 1
            if not self.by_layer[layer_id]:
                del self.by_layer[layer_id]

    # ---- once a revision is applied -----------------------------------------------------------------

    def settle(self) -> None:
        """Start or stop offering the layers touched by the events just applied."""
        touched, self._touched = self._touched, set()
        for layer_id in touched:
            self._refresh(layer_id)

    def refresh_all(self) -> None:
        self._touched.update(self.layers)
        self._touched.update(lid for lid in list(self._chunks) if lid not in self.layers)
        self.settle()

    def _refresh(self, layer_id: str) -> None:
        layer = self.layers.get(layer_id)
        live = layer is not None and layer.get("state") == states.RUNNING and layer["job"] in self.jobs
        running = self.ready.chunked(layer_id)
        if not live:
            if running is not None:
                self.ready.stop(layer_id)
                for task_id in [t for t in self.ready.ids() if layer_of(t) == layer_id]:
                    entry = self.ready.remove(task_id)
                    if entry is not None:
                        self._parked.setdefault(layer_id, {})[task_id] = entry
            return
        assert layer is not None
        if running is None:
            running = Chunked(layer)
            for number in self._keyed.get(layer_id, ()):
                running.take(number)
            self.ready.start(running)
            for entry in self._parked.pop(layer_id, {}).values():
                self.ready.put(entry)
                self.on_ready(entry.task)
        running.layer = layer
        for first, (raw, token) in list(self._chunks.get(layer_id, {}).items()):
            if chunks.committed(token, layer):
                self._add(running, first, chunks.read(raw)[1], raw)

    def _add(self, running: Chunked, first: int, specs: list[Value], raw: bytes) -> None:
        if not running.add(first, specs, raw):
            return
        for n, spec in enumerate(specs, first):
            if "start_within" in spec and running.has(n):
                self.on_ready(running.entry(n).task)
        if specs and "deadline" in specs[0]:  # the job's deadline: one task says it for all
            self.on_ready(chunks.task_of(running.layer, first, specs[0], states.QUEUED))

    # ---- questions ------------------------------------------------------------------------------------

    def busy(self, layer_id: str) -> bool:
        """Has the layer a queued task (keyed or keyless)?"""
        running = self.ready.chunked(layer_id)
        return self.by_layer.get(layer_id, 0) > 0 or (running is not None and running.total_left() > 0)

