"""What a task becomes: every change of a task's state is decided here, and only here.

Pure rules: no etcd, no I/O, no clock reads (``now`` is passed in). Callers (``claims.py`` for a
node's claim, finish and recovery; ``control.py`` for a user's kill, skip and retry) read the
task, ask this module for a :class:`Decision`, and write what it says in one transaction.

Two budgets, both counted since the last manual retry (see ``docs/states.md``, "Attempts"):

* ``failures``, against ``max_attempts``: runs that ended badly through the task's own doing (a
  non-zero exit, a signal we did not send, a timeout, cannot start, a result over the cap, a bad
  spawn file).
* ``disruptions``, against ``max_disruptions``: runs that ended through no fault of the task (its
  node was lost, fenced itself, or handed it back). These do not use up ``max_attempts``, but are
  bounded too, so a task that takes its node down every time still ends.

``attempts`` counts every run started (every claim) over the task's whole life: it names the log
files and ``CONDUCTOR_ATTEMPT``, and a retry keeps it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any

from . import backoff, model, states
from .errors import Refused
from .model import Value
from .spec import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_DISRUPTIONS


class Cause(str, Enum):
    """How a run (or a user's change) ended."""

    EXIT = "exit"  # the process exited: code 0 is success, anything else a failure
    SIGNAL = "signal"  # killed by a signal we did not send
    TIMEOUT = "timeout"
    START_FAILED = "start_failed"  # cannot exec, bad cwd, secrets unavailable
    RESULT_TOO_BIG = "result_too_big"
    SPAWN_INVALID = "spawn_invalid"  # a bad spawn file
    INTERNAL = "internal"  # the conductor failed while supervising the run
    KILLED = "killed"  # a user's kill
    SKIPPED = "skipped"  # a user's skip
    FENCED = "fenced"  # the node lost its etcd session and killed its runs
    HANDED_BACK = "handed_back"  # shutdown hand-back, or a claim that never started
    NODE_LOST = "node_lost"  # found by another node after the lease expired


FAILURES = frozenset({Cause.SIGNAL, Cause.TIMEOUT, Cause.START_FAILED, Cause.RESULT_TOO_BIG,
                      Cause.SPAWN_INVALID, Cause.INTERNAL})
DISRUPTIONS = frozenset({Cause.FENCED, Cause.HANDED_BACK, Cause.NODE_LOST})
STOPS = {"kill": Cause.KILLED, "skip": Cause.SKIPPED}


@dataclass(frozen=True)
class Outcome:
    """How one run of a task ended, as its node saw it. Derive a changed one with
    :func:`dataclasses.replace`; never mutate.

    ``extra`` is opaque here: more of the same commit, that ``claims`` writes with the finish (a
    spawned batch's staged tasks)."""

    cause: Cause
    reason: str
    exit_code: int | None = None
    started: float | None = None
    ended: float | None = None
    usage: dict[str, Any] | None = None
    result: bytes | None = None
    log_tail: bytes = b""
    log_size: int = 0
    log_path: str | None = None
    log_truncated: bool = False
    extra: Any = None
    cached: str | None = None  # a cache hit (taskcache.py): the task whose result it took, not run

    @property
    def ok(self) -> bool:
        return self.cause is Cause.EXIT and self.exit_code == 0

    @property
    def is_disruption(self) -> bool:
        return self.cause in DISRUPTIONS

    @property
    def is_failure(self) -> bool:
        return self.cause in FAILURES or (self.cause is Cause.EXIT and self.exit_code != 0)

    @property
    def is_stop(self) -> bool:
        """A user's kill or skip: final, never retried."""
        return self.cause in (Cause.KILLED, Cause.SKIPPED)


@dataclass(frozen=True)
class Decision:
    """What to write for one task: its new value and state, and what that changes in its job's
    counts (:mod:`conductor.counts`). The task key is the queue entry, so its value is all there
    is to write: QUEUED makes it claimable, anything else does not.

    ``changed`` False means nothing is to be written (``done`` says why, e.g. "already SKIPPED")."""

    task: Value
    state: str
    tally: str | None = None  # counted +1 in this state (RUNNING or final)
    untally: str | None = None  # counted -1 in this state: the counted state it leaves
    done: str = ""  # what happened, in words: the log line, and what the CLI reports
    changed: bool = True


# ---- counting -------------------------------------------------------------------------------------


def failures(task: Value) -> int:
    """Failed runs since the last manual retry (older values count from ``retry_base``)."""
    if "failures" in task:
        return int(task["failures"])
    legacy = task.get("attempts", 0) - task.get("retry_base", 0)
    return max(0, legacy - (1 if task.get("state") == states.RUNNING else 0))


def disruptions(task: Value) -> int:
    """Disrupted runs (node lost, fenced, handed back) since the last manual retry."""
    return int(task.get("disruptions", 0))


def max_disruptions(task: Value) -> int:
    """The task's disruption budget (values written before it existed get the default)."""
    return int(task.get("max_disruptions") or DEFAULT_MAX_DISRUPTIONS)


def attempt_text(task: Value) -> str:
    """``attempt 2 of 3`` (``, 1 disruption`` when there were any): the run now, or next, or last.

    The number counts failures since the last retry, plus one for the run that is going on, is
    next, or ended the task some other way; a task whose failures used its budget shows the last."""
    most = task.get("max_attempts") or DEFAULT_MAX_ATTEMPTS
    text = f"attempt {min(failures(task) + 1, most)} of {most}"
    d = disruptions(task)
    if d:
        text += f", {d} disruption{'s' if d != 1 else ''}"
    return text


def _set_counts(task: Value, failed: int, disrupted: int) -> None:
    task["failures"], task["disruptions"] = failed, disrupted
    task.pop("retry_base", None)  # replaced by the two counts above


def _own_copy(task: Value) -> Value:
    """A copy safe to change with model.move and top-level assignments (records is the only
    nested value those change), several times cheaper than a deep copy."""
    out = dict(task)
    out["records"] = list(task.get("records", []))
    return out


# ---- a node's claim -----------------------------------------------------------------------------


def decide_claim(task: Value, node: str, now: float, lease: str = "") -> Value:
    """The RUNNING value a claim writes: one more run started (``attempts``), by ``node`` on
    ``lease`` (hex): the claim itself, which the node's lease's alive key fences."""
    out = _own_copy(task)
    if out["state"] == states.PENDING:  # a task a user changed before its layer started
        model.move(out, states.QUEUED, "its layer started", None, now)
    _set_counts(out, failures(task), disruptions(task))  # an older value gets the fields it lacked
    out["attempts"] = task.get("attempts", 0) + 1
    out.pop("not_before", None)  # a retry delay is over once the task runs
    out.update(node=node, lease=lease, started=now, ended=None, exit_code=None, usage=None, reason=None)
    model.move(out, states.RUNNING, f"claimed by {node} ({attempt_text(out)})", node, now)
    return out


# ---- the end of a run ---------------------------------------------------------------------------


def kill_cause(stop: str | None = None, hand_back: bool = False, cause: Cause | None = None) -> Cause:
    """Why the node kills a run: a user's stop ("kill" or "skip"), else a hand-back, else the
    given cause (TIMEOUT, FENCED); a kill with none of these counts as a failure (SIGNAL)."""
    if stop:
        return STOPS["skip" if stop == "skip" else "kill"]
    if hand_back:
        return Cause.HANDED_BACK
    return cause or Cause.SIGNAL


def kill_wins(new: Cause, old: Cause | None) -> bool:
    """Does a kill for ``new`` replace an earlier one for ``old``? The first reason stays, except
    that a user's stop wins over any other (it decides that the task is not run again)."""
    return old is None or (new in STOPS.values() and old not in STOPS.values())


def with_kill_request(outcome: Outcome, request: dict[str, Any] | None) -> Outcome:
    """A pending kill or skip request (``q/kills/<task>``) wins over however the run ended."""
    if not request or outcome.is_stop:
        return outcome
    action = "skip" if request.get("action") == "skip" else "kill"
    verb = "skipped" if action == "skip" else "killed"
    return dataclasses.replace(outcome, cause=STOPS[action], reason=f"{verb} by {request.get('by', '?')}")


def decide(task: Value, outcome: Outcome, node: str, now: float) -> Decision:
    """What a RUNNING task becomes after ``outcome``. A task that is not RUNNING any more (a user
    moved it) keeps its state and only takes the run's facts."""
    out = _own_copy(task)
    out.update(exit_code=outcome.exit_code, ended=outcome.ended or now, usage=outcome.usage,
               reason=outcome.reason)
    if outcome.started:
        out["started"] = outcome.started
    if task["state"] != states.RUNNING:
        return Decision(out, task["state"], done=f"kept {task['state']}")
    _set_counts(out, failures(task), disruptions(task))  # an older value gets the fields it lacked
    return _ran(_decided(out, outcome, node, now))


def _decided(out: Value, outcome: Outcome, node: str, now: float) -> Decision:
    if outcome.ok:
        return _final(out, states.COMPLETED, f"{outcome.reason} on {node} ({attempt_text(out)})", node, now)
    if outcome.is_stop:
        new = states.SKIPPED if outcome.cause is Cause.SKIPPED else states.ERRORED
        return _final(out, new, outcome.reason, node, now)
    if outcome.is_disruption:
        return _disrupted(out, outcome, node, now)
    return _failed(out, outcome, node, now)


def _ran(decision: Decision) -> Decision:
    """A decision over a RUNNING task: the task leaves RUNNING (counted -1 there)."""
    decision.task.pop("lease", None)  # the claim is over
    return dataclasses.replace(decision, untally=states.RUNNING)


def _final(task: Value, state: str, reason: str, node: str | None, now: float) -> Decision:
    model.move(task, state, reason, node, now)
    return Decision(task, state, tally=state, done=reason)


def _failed(task: Value, outcome: Outcome, node: str, now: float) -> Decision:
    text = attempt_text(task)
    failed = failures(task) + 1
    _set_counts(task, failed, disruptions(task))
    refused = backoff.not_retried(task, outcome.exit_code if outcome.cause is Cause.EXIT else None)
    if refused:
        task["reason"] = f"{outcome.reason}; {refused}"
        return _final(task, states.ERRORED, f"{outcome.reason} on {node}; {refused} ({text})", node, now)
    if failed < task["max_attempts"]:
        model.add_record(task, states.ERRORED, f"{outcome.reason} on {node} ({text})", node, now)
        wait = backoff.delay(task.get("retry"), failed, str(task.get("id")))
        if wait <= 0:
            return _requeue(task, f"retry: {attempt_text(task)} next", node, now)
        task["not_before"] = round(now + wait, 3)
        return _requeue(task, f"retry: {attempt_text(task)} next, due in {wait:g}s at "
                              f"{backoff.clock_text(task['not_before'])} (backoff)", node, now)
    return _final(task, states.ERRORED, f"{outcome.reason} on {node}; no attempt left "
                                        f"({failed} of {task['max_attempts']})", node, now)


def _disrupted(task: Value, outcome: Outcome, node: str, now: float) -> Decision:
    disrupted = disruptions(task) + 1
    _set_counts(task, failures(task), disrupted)
    limit = max_disruptions(task)
    why = _disruption_words(outcome, node)
    if disrupted < limit:
        return _requeue(task, f"{why}; not counted as a failed attempt (disruption {disrupted} of {limit})",
                        node, now)
    return _final(task, states.ERRORED, f"{why}; disrupted {disrupted} times (node lost, fenced or handed "
                                        f"back); giving up", node, now)


def _disruption_words(outcome: Outcome, node: str) -> str:
    if outcome.cause is Cause.HANDED_BACK:
        return f"handed back by {node}: {outcome.reason}"
    if outcome.cause is Cause.FENCED:
        return f"{outcome.reason} on {node}"
    return outcome.reason


def _requeue(task: Value, reason: str, node: str | None, now: float) -> Decision:
    model.move(task, states.QUEUED, reason, node, now)
    return Decision(task, states.QUEUED, done=reason)


def decide_lost(task: Value, lost_node: str, kill_request: dict[str, Any] | None, node: str,
                now: float) -> Decision:
    """Recovery of a task whose node's lease expired while it held it: a pending kill or skip
    request ends it as asked; otherwise the lost run counts as a disruption. A task that is not
    RUNNING on ``lost_node`` any more is not this recovery's to change (``changed`` is False)."""
    if task["state"] != states.RUNNING or task.get("node") != lost_node:
        return Decision(task, task["state"], done="not running there", changed=False)
    why = f"node {lost_node} was lost (its lease expired) during attempt {task.get('attempts', 0)}"
    outcome = Outcome(Cause.NODE_LOST, why, ended=now)
    stopped = with_kill_request(outcome, kill_request)
    if stopped is not outcome:
        stopped = dataclasses.replace(stopped, reason=f"{stopped.reason} ({why})")
    out = _own_copy(task)
    out["ended"] = now
    if stopped.is_stop:
        new = states.SKIPPED if stopped.cause is Cause.SKIPPED else states.ERRORED
        return _ran(_final(out, new, stopped.reason, node, now))
    return _ran(_disrupted(out, stopped, node, now))


# ---- a user's change of a task that is not running ------------------------------------------------


def decide_kill(task: Value, by: str, now: float) -> Decision:
    """A user's kill of a task that is not RUNNING: ERRORED, never retried."""
    return _decide_stop(task, "kill", by, now)


def decide_skip(task: Value, by: str, now: float) -> Decision:
    """A user's skip of a task that is not RUNNING: SKIPPED (counts as done)."""
    return _decide_stop(task, "skip", by, now)


def _decide_stop(task: Value, action: str, by: str, now: float) -> Decision:
    state = task["state"]
    if state == states.RUNNING:  # only its node can stop the process: the caller writes a request
        raise Refused(f"task {task['id']} is RUNNING: its node stops it (write a kill request)")
    if state in (states.COMPLETED, states.SKIPPED) or (state == states.ERRORED and action == "kill"):
        return Decision(task, state, done=f"already {state}", changed=False)
    new = states.ERRORED if action == "kill" else states.SKIPPED
    verb = "killed" if action == "kill" else "skipped"
    out = _own_copy(task)
    model.move(out, new, f"{verb} by {by}" + (" before it ran" if state != states.ERRORED else ""), None, now)
    out["ended"] = out.get("ended") or now
    return Decision(out, new, tally=new, untally=state if state in states.FINAL else None, done=verb)


def decide_expired(task: Value, reason: str, now: float) -> Decision:
    """A QUEUED task that was not started in time (``start_within``): ERRORED with ``reason``,
    never retried. Any other state is left alone (``changed`` False): it started, or ended."""
    if task["state"] != states.QUEUED:
        return Decision(task, task["state"], done=f"already {task['state']}", changed=False)
    out = _own_copy(task)
    out.pop("not_before", None)
    model.move(out, states.ERRORED, reason, None, now)
    out.update(ended=now, reason=reason)
    return Decision(out, states.ERRORED, tally=states.ERRORED, done=reason)


def decide_retry(task: Value, by: str, layer_state: str, now: float, explicit: bool = True) -> Decision:
    """A user's retry: the task runs again with both budgets fresh (``failures`` and
    ``disruptions`` reset; ``attempts`` kept). ``explicit`` False (retrying a layer or job) only
    retries ERRORED tasks. Raises :class:`Refused` for a RUNNING task."""
    state = task["state"]
    if state == states.RUNNING:
        raise Refused(f"task {task['id']} is RUNNING; kill it first to run it again")
    if state in (states.PENDING, states.QUEUED) or (not explicit and state != states.ERRORED):
        return Decision(task, state, done=f"already {state}", changed=False)
    out = _own_copy(task)
    _set_counts(out, 0, 0)
    out.pop("not_before", None)  # a user's retry runs at once
    out.update(exit_code=None, reason=None, ended=None)
    new = states.PENDING if layer_state == states.PENDING else states.QUEUED
    model.move(out, new, f"retried by {by}", None, now)
    return Decision(out, new, untally=state if state in states.FINAL else None, done="retried")


__all__ = ["Cause", "Outcome", "Decision", "DEFAULT_MAX_DISRUPTIONS", "attempt_text",
           "decide", "decide_claim", "decide_expired", "decide_lost", "decide_kill", "decide_skip", "decide_retry",
           "disruptions", "failures", "kill_cause", "kill_wins", "max_disruptions", "with_kill_request"]
