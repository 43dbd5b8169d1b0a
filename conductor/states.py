"""States, the transition table, and the rules that derive layer and job states from tasks.

This is the one place these rules live. Every write of a task state goes through
:func:`check_task` (the board calls it); ``docs/states.md`` shows the same tables and a test checks
that the two agree.
"""
from __future__ import annotations

from typing import Iterable

from .errors import ConductorError

PENDING = "PENDING"
QUEUED = "QUEUED"
RUNNING = "RUNNING"
COMPLETED = "COMPLETED"
ERRORED = "ERRORED"
SKIPPED = "SKIPPED"

TASK_STATES = (PENDING, QUEUED, RUNNING, COMPLETED, ERRORED, SKIPPED)
LAYER_STATES = (PENDING, RUNNING, COMPLETED, ERRORED, SKIPPED)
JOB_STATES = (PENDING, RUNNING, COMPLETED, ERRORED)
FINAL = frozenset({COMPLETED, ERRORED, SKIPPED})
DONE = frozenset({COMPLETED, SKIPPED})  # lets the layers after go on

# (from, to) -> what makes that move. A move not listed here is a bug and is refused.
TASK_TRANSITIONS: dict[tuple[str, str], str] = {
    (PENDING, QUEUED): "its layer started",
    (QUEUED, RUNNING): "a node claimed it",
    (RUNNING, COMPLETED): "it exited 0",
    (RUNNING, ERRORED): "it failed with no attempt left, was disrupted with no disruption left, or was killed",
    (RUNNING, QUEUED): "a failure with attempts left (after its retry delay), or a disruption (node lost, "
                       "fenced, handed back) with disruptions left",
    (ERRORED, QUEUED): "retried by a user",
    (COMPLETED, QUEUED): "retried by a user",
    (SKIPPED, QUEUED): "retried by a user",
    (PENDING, SKIPPED): "skipped by a user",
    (QUEUED, SKIPPED): "skipped by a user",
    (RUNNING, SKIPPED): "skipped by a user (the run is killed)",
    (ERRORED, SKIPPED): "skipped by a user",
    (PENDING, ERRORED): "killed by a user before it ran",
    (QUEUED, ERRORED): "killed by a user before it ran, or not started within its start_within",
    (ERRORED, PENDING): "retried by a user before its layer started",
    (COMPLETED, PENDING): "retried by a user before its layer started",
    (SKIPPED, PENDING): "retried by a user before its layer started",
}

LAYER_TRANSITIONS: dict[tuple[str, str], str] = {
    (PENDING, RUNNING): "every layer of lower order is done",
    (PENDING, COMPLETED): "it has no tasks and every layer of lower order is done",
    (RUNNING, COMPLETED): "no task left to run, none errored (or its policy is continue)",
    (RUNNING, ERRORED): "no task left to run and one errored",
    (ERRORED, RUNNING): "a task of it was retried",
    (COMPLETED, RUNNING): "a task of it was retried",
    (ERRORED, COMPLETED): "its errored tasks were skipped",
    (PENDING, SKIPPED): "skipped by a user",
    (RUNNING, SKIPPED): "skipped by a user",
    (ERRORED, SKIPPED): "skipped by a user",
    (PENDING, ERRORED): "killed by a user before it started",
    (SKIPPED, RUNNING): "a task of it was retried",
}

JOB_TRANSITIONS: dict[tuple[str, str], str] = {
    (PENDING, RUNNING): "a layer started",
    (PENDING, COMPLETED): "it has no tasks",
    (RUNNING, COMPLETED): "every layer is done",
    (RUNNING, ERRORED): "its lowest unfinished order is stuck on an errored layer",
    (ERRORED, RUNNING): "a task was retried or skipped",
    (COMPLETED, RUNNING): "a task was retried",
    (ERRORED, COMPLETED): "its errored work was skipped",
    (PENDING, ERRORED): "killed by a user before anything started",
}


class BadTransition(ConductorError):
    """A write tried a move the transition table does not allow."""


def _check(table: dict[tuple[str, str], str], kind: str, old: str, new: str) -> None:
    if old != new and (old, new) not in table:
        raise BadTransition(f"{kind} cannot go from {old} to {new}")


def check_task(old: str, new: str) -> None:
    _check(TASK_TRANSITIONS, "a task", old, new)


def check_layer(old: str, new: str) -> None:
    _check(LAYER_TRANSITIONS, "a layer", old, new)


def check_job(old: str, new: str) -> None:
    _check(JOB_TRANSITIONS, "a job", old, new)


def layer_outcome(errored: int, on_error: str, killed: bool = False, skipped: bool = False) -> str:
    """The state of a layer that has nothing left to run: a layer a user killed is ERRORED and
    one a user skipped is SKIPPED, whatever its tasks did."""
    if killed:
        return ERRORED
    if skipped:
        return SKIPPED
    if errored and on_error != "continue":
        return ERRORED
    return COMPLETED


def layer_is_done(state: str, on_error: str) -> bool:
    """Does this layer let layers of higher order start?"""
    return state in DONE or (state == ERRORED and on_error == "continue")


def job_state(layers: Iterable[tuple[int, str, str]]) -> str:
    """Derive a job's state from its layers' ``(order, state, on_error)``.

    COMPLETED when every layer is done; ERRORED when the lowest order that is not done has nothing
    running and an errored layer (it is stuck); RUNNING when anything has started; else PENDING.
    """
    layers = list(layers)
    not_done = [(o, s) for o, s, e in layers if not layer_is_done(s, e)]
    if not not_done:
        return COMPLETED
    lowest = min(o for o, _ in not_done)
    group = [s for o, s in not_done if o == lowest]
    if ERRORED in group and RUNNING not in group:
        return ERRORED
    if any(s != PENDING for _, s, _ in layers):
        return RUNNING
    return PENDING


def runnable_orders(layers: Iterable[tuple[int, str, str]]) -> int | None:
    """The order whose PENDING layers may start now, or None.

    Layers of one order start together, once every layer of lower order is done.
    """
    layers = list(layers)
    not_done = sorted({o for o, s, e in layers if not layer_is_done(s, e)})
    if not not_done:
        return None
    lowest = not_done[0]
    if any(s == PENDING for o, s, _ in layers if o == lowest):
        return lowest
    return None
