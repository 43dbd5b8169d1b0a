"""Layer settling as a pure plan: which layers end, which start, and what becomes of the job.

:func:`plan` looks at values read in one snapshot (a job, its layers, and the counts of its
running layers' tasks) and returns a :class:`Plan`: no etcd, no clock (``now`` is passed in), and
no input is changed; the values in a plan are copies, moved through :func:`model.move`. The rules
themselves stay in :mod:`conductor.states` (``layer_outcome``, ``runnable_orders``, ``job_state``);
this module only applies them in the order a settle needs. :meth:`Board.settle` turns a plan into
one fenced transaction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from . import compensation, model, states
from .model import Value

ACTIVE = (states.PENDING, states.RUNNING)  # a job in these states keeps its active/<job> key

JOB_REASONS = {states.RUNNING: "a layer started", states.COMPLETED: "every layer is done",
               states.ERRORED: "a layer errored and nothing else can run", states.PENDING: "nothing started"}


@dataclass(frozen=True)
class LayerCounts:
    """What is left of one running layer in ``q/``, and how many of its tasks errored."""

    ready: int = 0  # not run yet (queued, or pending while the layer is being queued)
    claimed: int = 0  # running, orphaned or not: an orphan keeps its layer open
    errored: int = 0
    revision: int = 0  # the snapshot these counts were read at

    @property
    def drained(self) -> bool:
        return self.ready == 0 and self.claimed == 0


@dataclass(frozen=True)
class Transition:
    """One layer's move. ``drained``: it ended because nothing of it is left in ``q/``, so the
    write must check that still holds (a layer ended at its start has nothing to check)."""

    index: int
    state: str
    reason: str
    drained: bool = False


@dataclass(frozen=True)
class Message:
    """on_success / on_failure messages to record in the outbox with the write."""

    names: tuple[str, ...]
    outcome: str  # "success" or "failure"
    what: str  # "layer<index>" or "job<n>": part of the outbox key, so one end records them once


@dataclass(frozen=True)
class Plan:
    """What one settle writes. ``layers`` holds the new value of every layer that moves."""

    job: Value
    was: str  # the job's state before
    layers: Mapping[int, Value] = field(default_factory=dict)
    ended: tuple[Transition, ...] = ()
    started: tuple[Transition, ...] = ()
    messages: tuple[Message, ...] = ()
    active: str | None = None  # "put", "delete" or None: what to do with active/<job>
    compensation: str | None = None  # the compensation's new state, when it moved (compensation.py)
    counted: int = 0  # the revision of the counts: drained layers' tasks must not have changed since

    @property
    def empty(self) -> bool:
        """Nothing to write: no layer moves and the job keeps its state."""
        return not self.ended and not self.started and self.job["state"] == self.was and not self.compensation

    @property
    def drained(self) -> list[int]:
        return [t.index for t in self.ended if t.drained]

    @property
    def job_reason(self) -> str | None:
        return JOB_REASONS[self.job["state"]] if self.job["state"] != self.was else None


def watched(layers: Mapping[int, Value]) -> list[int]:
    """Layers that may end now: RUNNING ones, and ERRORED ones that were queued and not killed
    (skipping their errored tasks lets them complete)."""
    return sorted(i for i, layer in layers.items() if layer["state"] == states.RUNNING
                  or (layer["state"] == states.ERRORED and layer.get("enqueued") and not layer.get("killed_at")))


def plan(job: Value, layers: Mapping[int, Value], counts: Mapping[str, LayerCounts], node: str | None,
         now: float, limit: int | None = None) -> Plan:
    """The plan for one settle of ``job`` whose layers (by index) and counts (by layer id) were
    read together. ``limit`` caps the layers that move (the rest are left to the next settle, which
    starts where this one stopped); None means no cap. Raises nothing for consistent input."""
    draft = _Draft(job, layers, node, now, limit)
    draft.counted = max((c.revision for c in counts.values()), default=0)
    for i in watched(layers):
        if draft.full:
            break
        draft.end_drained(i, counts.get(layers[i]["id"]))
    draft.sync_summaries()
    draft.start_runnable()
    draft.derive_job()
    draft.compensate()  # compensation (issue 12): after the job's state, which it depends on
    return draft.result()


def _own_copy(value: Value) -> Value:
    """A copy that model.move may change without touching the original (it appends a record)."""
    return {**value, "records": list(value.get("records", []))}


def _index(summary: Value) -> int:
    return int(summary["id"].rsplit(".", 1)[1])


def _end_reason(layer: Value, outcome: str, errored: int) -> str:
    if layer.get("killed_at"):
        return "killed by a user"
    if layer.get("skipped_at"):
        return "skipped by a user"
    if outcome == states.ERRORED:
        return f"{errored} task(s) errored"
    return "every task is done" + (f" ({errored} errored, policy continue)" if errored else "")


def enough_done(layer: Value, errored: int) -> bool:
    """Partial success (``min_success``, docs/flow/partial-success.md): did at least that share of
    a drained layer's tasks end done (COMPLETED or SKIPPED)? Never for a layer a user killed."""
    share = layer.get("min_success")
    total = int(layer.get("tasks") or 0)
    if share is None or total <= 0 or layer.get("killed_at"):
        return False
    # compared in whole tasks: 0.95 of 20 is 19 tasks, whatever float rounding says
    return total - errored >= _needed(share, total)


def _needed(share: float, total: int) -> int:
    return max(1, math.ceil(round(share * total, 9)))


def _partial_reason(layer: Value, errored: int) -> str:
    total = int(layer["tasks"])
    return (f"{total - errored} of {total} tasks done, {errored} errored: min_success {layer['min_success']:g} "
            f"needs {_needed(layer['min_success'], total)}")


class _Draft:
    """The plan being built: copies of what moved, and the transitions in the order they happen."""

    def __init__(self, job: Value, layers: Mapping[int, Value], node: str | None, now: float,
                 limit: int | None):
        self.was = job["state"]
        self.was_compensating = compensation.busy(job)
        self.compensation: str | None = None
        self.job = {**_own_copy(job), "layers": [dict(s) for s in job["layers"]]}
        self.layers = dict(layers)
        self.node, self.now, self.limit = node, now, limit
        self.changed: dict[int, Value] = {}
        self.counted = 0
        self.ended: list[Transition] = []
        self.started: list[Transition] = []

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.changed) >= self.limit

    def _own(self, i: int) -> Value:
        if i not in self.changed:
            self.changed[i] = self.layers[i] = _own_copy(self.layers[i])
        return self.changed[i]

    def _move(self, i: int, state: str, reason: str) -> Value:
        return model.move(self._own(i), state, reason, self.node, at=self.now)

    def end_drained(self, i: int, counts: LayerCounts | None) -> None:
        """End a queued layer with nothing left in ``q/`` (unless it already has that outcome)."""
        layer = self.layers[i]
        if counts is None or not layer.get("enqueued") or not counts.drained:
            return
        outcome = states.layer_outcome(counts.errored, layer["on_error"], bool(layer.get("killed_at")),
                                       bool(layer.get("skipped_at")))
        reason = _end_reason(layer, outcome, counts.errored)
        if outcome == states.ERRORED and enough_done(layer, counts.errored):
            outcome, reason = states.COMPLETED, _partial_reason(layer, counts.errored)
        if outcome == layer["state"]:
            return
        self._move(i, outcome, reason)["ended"] = self.now
        self.ended.append(Transition(i, outcome, reason, drained=True))

    def sync_summaries(self) -> None:
        """The job's line per layer follows the layer values (a retry or flag may have changed them)."""
        for s in self.job["layers"]:
            layer = self.layers[_index(s)]
            s["state"] = layer["state"]
            if layer.get("killed_at"):
                s["killed"] = True

    def start_runnable(self) -> None:
        """Start the lowest runnable order; while that order only held layers that ended at once
        (empty or flagged), go on with the next one."""
        while not self.full:
            order = states.runnable_orders(model.summary_tuples(self.job))
            if order is None or not self._start_order(order):
                return

    def _start_order(self, order: int) -> bool:
        """Start the PENDING layers of ``order``; True when none of them is left running or waiting."""
        go_on = True
        for s in self.job["layers"]:
            if s["order"] != order or s["state"] != states.PENDING:
                continue
            if self.full:
                return False
            go_on = self._start_one(s) and go_on
        return go_on

    def _start_one(self, s: Value) -> bool:
        """Start one layer (a paused one waits, even when empty). True when it ended at once in a
        state that lets the next order start."""
        i = _index(s)
        if self.job.get("paused_at") or self.layers[i].get("paused_at"):
            return False
        layer = self._own(i)
        layer["tasks"] = s["tasks"] = max(layer["tasks"], s["tasks"])
        if layer.get("killed_at") or layer.get("skipped_at"):  # its tasks were stopped already
            state = states.ERRORED if layer.get("killed_at") else states.SKIPPED
            go_on = state == states.SKIPPED or layer["on_error"] == "continue"
            self._end_at_start(i, state, "killed by a user" if layer.get("killed_at") else "skipped by a user")
        elif layer["tasks"] == 0:
            go_on = True
            self._end_at_start(i, states.COMPLETED, "it has no tasks")
        else:
            reason = "every layer of lower order is done"
            self._move(i, states.RUNNING, reason).update(started=self.now, enqueued=True)
            self.started.append(Transition(i, states.RUNNING, reason))
            go_on = False
        s["state"] = layer["state"]
        return go_on

    def _end_at_start(self, i: int, state: str, reason: str) -> None:
        self._move(i, state, reason).update(started=self.now, ended=self.now)
        self.ended.append(Transition(i, state, reason))

    def derive_job(self) -> None:
        new_state = states.job_state(model.summary_tuples(self.job))
        if new_state == self.job["state"]:
            return
        reason = JOB_REASONS[new_state]
        if new_state == states.ERRORED and self.job.get("deadline_passed"):
            reason = "deadline passed"  # the job was killed by its deadline (deadlines.py)
        model.move(self.job, new_state, reason, self.node, at=self.now)
        if new_state == states.RUNNING and not self.job.get("started"):
            self.job["started"] = self.now
        if new_state in (states.COMPLETED, states.ERRORED):
            self.job["ended"] = self.now

    def messages(self) -> list[Message]:
        """The on_success / on_failure messages of the layers that end and of the job, if it ends."""
        out: list[Message] = []
        for t in self.ended:
            layer = self.changed[t.index]
            out += _message(layer, layer["state"] in states.DONE, f"layer{t.index}")
        state = self.job["state"]
        if state != self.was and state in (states.COMPLETED, states.ERRORED):
            out += _message(self.job, state == states.COMPLETED, f"job{len(self.job.get('records', []))}")
        return out

    # ---- compensation (issue 12; the rule is compensation.step) ----------------------------------

    def compensate(self) -> None:
        """Move the job's compensation on: start its next layer, or end it (compensation.py)."""
        if not self.job.get("compensation"):
            return
        comp = self.job["compensation"] = {**self.job["compensation"],
                                           "layers": [dict(c) for c in self.job["compensation"]["layers"]]}
        while not self.full and not self.job.get("paused_at"):
            step = compensation.step(self.job, {c["index"]: self.layers[c["index"]]["state"] for c in comp["layers"]})
            if step is None:
                break
            why = step.reason if step.state == states.SKIPPED else "the layer it undoes did not complete"
            for i in step.skip:
                self._end_at_start(i, states.SKIPPED, f"not needed: {why}")
            if step.queue is not None:
                comp["queue"] = list(step.queue)
            if step.state != comp["state"]:
                comp.update(state=step.state, reason=step.reason)
                self.compensation = step.state
                model.add_record(self.job, self.job["state"], f"compensation {step.state}: {step.reason}",
                                 self.node, self.now)
            if step.start is None or not self._start_compensation(step.start):
                break
        for c in comp["layers"]:
            c["state"] = self.layers[c["index"]]["state"]

    def _start_compensation(self, i: int) -> bool:
        """Start one compensation layer; True when it ended at once (empty or killed)."""
        layer = self.layers[i]
        if layer.get("killed_at") or layer.get("skipped_at") or not layer["tasks"]:
            state = states.ERRORED if layer.get("killed_at") else states.SKIPPED if layer.get("skipped_at") \
                else states.COMPLETED
            self._end_at_start(i, state, "it has no tasks" if state == states.COMPLETED else "stopped by a user")
            return True
        reason = f"compensating for {layer['compensates']}" if layer.get("compensates") else "the job failed"
        self._move(i, states.RUNNING, reason).update(started=self.now, enqueued=True)
        self.started.append(Transition(i, states.RUNNING, reason))
        return False

    def active(self) -> str | None:
        if self.job["state"] not in ACTIVE and not compensation.busy(self.job):  # a compensation is settled too
            return "delete"
        return "put" if self.was not in ACTIVE and not self.was_compensating else None

    def result(self) -> Plan:
        return Plan(job=self.job, was=self.was, layers=dict(self.changed), ended=tuple(self.ended),
                    started=tuple(self.started), messages=tuple(self.messages()), active=self.active(),
                    compensation=self.compensation, counted=self.counted)


def _message(value: Value, good: bool, what: str) -> list[Message]:
    names = value.get("on_success" if good else "on_failure") or []
    return [Message(tuple(names), "success" if good else "failure", what)] if names else []


__all__ = ["LayerCounts", "Message", "Plan", "Transition", "plan", "watched"]
