"""The pure rules of conductor/lifecycle.py: what a task becomes. No etcd."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from conductor import lifecycle, states
from conductor.errors import Refused
from conductor.lifecycle import Cause, Decision, Outcome

NOW = 1_700_000_000.0
FAILURE_CAUSES = [(Cause.EXIT, 3), (Cause.SIGNAL, -9), (Cause.TIMEOUT, -15), (Cause.START_FAILED, None),
                  (Cause.RESULT_TOO_BIG, 0), (Cause.SPAWN_INVALID, 0), (Cause.INTERNAL, None)]
DISRUPTION_CAUSES = [Cause.FENCED, Cause.HANDED_BACK, Cause.NODE_LOST]


def task(state: str = states.QUEUED, **fields: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"kind": "task", "id": "j1.0.0", "job": "j1", "layer": "j1.0", "user": "u",
                             "state": state, "attempts": 0, "failures": 0, "disruptions": 0,
                             "max_attempts": 3, "max_disruptions": 10, "records": []}
    value.update(fields)
    return value


def running(**fields: Any) -> dict[str, Any]:
    """A task as a claim leaves it (failures and disruptions as given before the claim)."""
    queued = task(**fields)
    return lifecycle.decide_claim(queued, "n1", NOW)


def ended(cause: Cause, code: int | None = None, reason: str = "why") -> Outcome:
    return Outcome(cause, reason, code, NOW - 5, NOW)


def check_moves(before: dict[str, Any], decision: Decision) -> None:
    """Every record a decision appended is a move the transition table allows, in order, ending
    in the decided state (a retry's ERRORED record then QUEUED: RUNNING, ERRORED, QUEUED)."""
    state = before["state"]
    for record in decision.task["records"][len(before["records"]):]:
        assert record["state"] == state or (state, record["state"]) in states.TASK_TRANSITIONS, (state, record)
        state = record["state"]
    assert state == decision.state == decision.task["state"]


# ---- outcomes -----------------------------------------------------------------------------------


def test_exit_0_completes_and_writes_its_tally():
    before = running()
    d = lifecycle.decide(before, ended(Cause.EXIT, 0, "exit 0"), "n1", NOW)
    assert (d.state, d.tally, d.untally) == (states.COMPLETED, states.COMPLETED, states.RUNNING)
    assert d.task["records"][-1]["reason"] == "exit 0 on n1 (attempt 1 of 3)"
    assert d.task["exit_code"] == 0 and d.task["ended"] == NOW and d.task["started"] == NOW - 5
    check_moves(before, d)


@pytest.mark.parametrize("cause,code", FAILURE_CAUSES)
def test_a_failure_is_retried_while_attempts_are_left(cause: Cause, code: int | None):
    before = running(failures=1)
    outcome = ended(cause, code)
    assert outcome.is_failure and not outcome.ok and not outcome.is_disruption
    d = lifecycle.decide(before, outcome, "n1", NOW)
    assert (d.state, d.untally, d.tally) == (states.QUEUED, states.RUNNING, None)
    assert (d.task["failures"], d.task["disruptions"], d.task["attempts"]) == (2, 0, 1)
    assert [r["state"] for r in d.task["records"][-2:]] == [states.ERRORED, states.QUEUED]
    assert d.task["records"][-2]["reason"] == "why on n1 (attempt 2 of 3)"
    assert d.task["records"][-1]["reason"] == "retry: attempt 3 of 3 next"
    check_moves(before, d)


@pytest.mark.parametrize("cause,code", FAILURE_CAUSES)
def test_a_failure_with_no_attempt_left_errors(cause: Cause, code: int | None):
    before = running(failures=2)
    d = lifecycle.decide(before, ended(cause, code), "n1", NOW)
    assert (d.state, d.tally, d.untally) == (states.ERRORED, states.ERRORED, states.RUNNING)
    assert d.task["records"][-1]["reason"] == "why on n1; no attempt left (3 of 3)"
    assert d.task["failures"] == 3
    check_moves(before, d)


def test_max_attempts_1_means_one_run():
    before = running(max_attempts=1)
    d = lifecycle.decide(before, ended(Cause.EXIT, 1, "exit 1"), "n1", NOW)
    assert d.state == states.ERRORED and "no attempt left (1 of 1)" in d.task["records"][-1]["reason"]


@pytest.mark.parametrize("cause", DISRUPTION_CAUSES)
def test_a_disruption_is_requeued_without_using_an_attempt(cause: Cause):
    before = running(max_attempts=1, disruptions=3)
    outcome = ended(cause)
    assert outcome.is_disruption and not outcome.is_failure
    d = lifecycle.decide(before, outcome, "n1", NOW)
    assert (d.state, d.untally, d.tally) == (states.QUEUED, states.RUNNING, None)
    assert (d.task["failures"], d.task["disruptions"], d.task["attempts"]) == (0, 4, 1)
    assert "not counted as a failed attempt (disruption 4 of 10)" in d.task["records"][-1]["reason"]
    check_moves(before, d)


@pytest.mark.parametrize("cause", DISRUPTION_CAUSES)
def test_a_disruption_with_none_left_errors(cause: Cause):
    before = running(disruptions=9)
    d = lifecycle.decide(before, ended(cause), "n1", NOW)
    assert (d.state, d.tally) == (states.ERRORED, states.ERRORED)
    assert d.task["records"][-1]["reason"].endswith(
        "; disrupted 10 times (node lost, fenced or handed back); giving up")
    check_moves(before, d)


def test_a_hand_back_names_its_node():
    d = lifecycle.decide(running(), ended(Cause.HANDED_BACK, reason="the node is shutting down"), "n1", NOW)
    assert d.task["records"][-1]["reason"].startswith("handed back by n1: the node is shutting down; ")


@pytest.mark.parametrize("cause,state", [(Cause.KILLED, states.ERRORED), (Cause.SKIPPED, states.SKIPPED)])
def test_a_users_stop_is_final_whatever_is_left(cause: Cause, state: str):
    before = running()
    d = lifecycle.decide(before, ended(cause, -15, "stopped by ann"), "n1", NOW)
    assert (d.state, d.tally, d.untally) == (state, state, states.RUNNING)
    assert (d.task["failures"], d.task["disruptions"]) == (0, 0), "a stop counts neither"
    check_moves(before, d)


@pytest.mark.parametrize("moved", [states.SKIPPED, states.ERRORED, states.QUEUED])
def test_a_task_moved_meanwhile_keeps_its_state(moved: str):
    before = dict(running(), state=moved)
    d = lifecycle.decide(before, ended(Cause.EXIT, 0, "exit 0"), "n1", NOW)
    assert (d.state, d.tally, d.untally, d.task["records"]) == (moved, None, None, before["records"])
    assert d.task["exit_code"] == 0 and d.task["reason"] == "exit 0"


def test_decide_never_changes_its_input():
    before = running()
    copy = {**before, "records": list(before["records"])}
    outcome = ended(Cause.EXIT, 1)
    lifecycle.decide(before, outcome, "n1", NOW)
    assert before == copy
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.reason = "x"  # type: ignore[misc]


# ---- kill requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("cause", [Cause.EXIT, Cause.TIMEOUT, Cause.HANDED_BACK, Cause.FENCED])
def test_a_pending_kill_request_wins(cause: Cause):
    o = lifecycle.with_kill_request(ended(cause, 0), {"action": "skip", "by": "ann"})
    assert (o.cause, o.reason) == (Cause.SKIPPED, "skipped by ann")
    o = lifecycle.with_kill_request(ended(cause, 0), {"action": "kill", "by": "bob"})
    assert (o.cause, o.reason) == (Cause.KILLED, "killed by bob")


def test_without_a_request_or_once_stopped_the_outcome_stays():
    o = ended(Cause.EXIT, 0)
    assert lifecycle.with_kill_request(o, None) is o
    stopped = ended(Cause.KILLED, reason="killed by ann")
    assert lifecycle.with_kill_request(stopped, {"action": "skip", "by": "bob"}) is stopped


def test_kill_causes_and_which_kill_wins():
    assert lifecycle.kill_cause("skip") is Cause.SKIPPED and lifecycle.kill_cause("kill", True) is Cause.KILLED
    assert lifecycle.kill_cause(None, True) is Cause.HANDED_BACK
    assert lifecycle.kill_cause(cause=Cause.TIMEOUT) is Cause.TIMEOUT and lifecycle.kill_cause() is Cause.SIGNAL
    assert lifecycle.kill_wins(Cause.TIMEOUT, None) and not lifecycle.kill_wins(Cause.FENCED, Cause.TIMEOUT)
    assert lifecycle.kill_wins(Cause.KILLED, Cause.HANDED_BACK) and not lifecycle.kill_wins(Cause.SKIPPED, Cause.KILLED)


# ---- a lost node --------------------------------------------------------------------------------


def test_a_lost_node_is_a_disruption():
    before = running(max_attempts=1)
    d = lifecycle.decide_lost(before, "n1", None, "n2", NOW)
    assert (d.state, d.untally, d.changed) == (states.QUEUED, states.RUNNING, True)
    assert (d.task["failures"], d.task["disruptions"]) == (0, 1)
    reason = d.task["records"][-1]["reason"]
    assert reason.startswith("node n1 was lost (its lease expired) during attempt 1") and d.task["records"][-1]["node"] == "n2"
    check_moves(before, d)


def test_a_lost_node_with_no_disruption_left_errors():
    d = lifecycle.decide_lost(running(max_disruptions=2, disruptions=1), "n1", None, "n2", NOW)
    assert (d.state, d.tally) == (states.ERRORED, states.ERRORED)
    assert "disrupted 2 times" in d.task["records"][-1]["reason"]


@pytest.mark.parametrize("action,state", [("kill", states.ERRORED), ("skip", states.SKIPPED)])
def test_a_lost_node_with_a_kill_request_ends_as_asked(action: str, state: str):
    before = running()
    d = lifecycle.decide_lost(before, "n1", {"action": action, "by": "ann"}, "n2", NOW)
    assert (d.state, d.tally, d.untally) == (state, state, states.RUNNING)
    assert d.task["records"][-1]["reason"].startswith(f"{'killed' if action == 'kill' else 'skipped'} by ann (node n1")
    assert d.task["ended"] == NOW and d.task["disruptions"] == 0
    check_moves(before, d)


def test_a_lost_node_changes_nothing_it_no_longer_holds():
    assert not lifecycle.decide_lost(running(), "other", None, "n2", NOW).changed
    assert not lifecycle.decide_lost(task(states.COMPLETED, node="n1"), "n1", None, "n2", NOW).changed


# ---- a user's kill, skip and retry --------------------------------------------------------------


@pytest.mark.parametrize("state", states.TASK_STATES)
def test_kill_of_each_state(state: str):
    if state == states.RUNNING:
        with pytest.raises(Refused):
            lifecycle.decide_kill(task(state), "ann", NOW)
        return
    before = task(state)
    d = lifecycle.decide_kill(before, "ann", NOW)
    if state in (states.COMPLETED, states.SKIPPED, states.ERRORED):
        assert not d.changed and d.done == f"already {state}" and d.task is before
        return
    assert (d.state, d.tally, d.untally) == (states.ERRORED, states.ERRORED, None)
    assert d.task["records"][-1]["reason"] == "killed by ann before it ran" and d.task["ended"] == NOW
    check_moves(before, d)


@pytest.mark.parametrize("state", states.TASK_STATES)
def test_skip_of_each_state(state: str):
    if state == states.RUNNING:
        with pytest.raises(Refused):
            lifecycle.decide_skip(task(state), "ann", NOW)
        return
    before = task(state)
    d = lifecycle.decide_skip(before, "ann", NOW)
    if state in (states.COMPLETED, states.SKIPPED):
        assert not d.changed
        return
    assert (d.state, d.tally) == (states.SKIPPED, states.SKIPPED)
    assert d.untally == (states.ERRORED if state == states.ERRORED else None)
    check_moves(before, d)


@pytest.mark.parametrize("state", states.TASK_STATES)
@pytest.mark.parametrize("layer_state", [states.PENDING, states.RUNNING, states.COMPLETED])
def test_retry_of_each_state(state: str, layer_state: str):
    before = task(state, attempts=5, failures=3, disruptions=2)
    if state == states.RUNNING:
        with pytest.raises(Refused):
            lifecycle.decide_retry(before, "ann", layer_state, NOW)
        return
    d = lifecycle.decide_retry(before, "ann", layer_state, NOW)
    if state in (states.PENDING, states.QUEUED):
        assert not d.changed and d.done == f"already {state}"
        return
    new = states.PENDING if layer_state == states.PENDING else states.QUEUED
    assert (d.state, d.untally, d.tally) == (new, state, None)
    assert (d.task["attempts"], d.task["failures"], d.task["disruptions"]) == (5, 0, 0), "budgets fresh, runs kept"
    check_moves(before, d)


def test_retry_of_a_layer_only_takes_errored_tasks():
    for state in (states.COMPLETED, states.SKIPPED):
        assert not lifecycle.decide_retry(task(state), "ann", states.RUNNING, NOW, explicit=False).changed
    assert lifecycle.decide_retry(task(states.ERRORED), "ann", states.RUNNING, NOW, explicit=False).changed


def test_a_retried_task_gets_its_whole_budget_again():
    t = running(max_attempts=2)
    for _ in range(2):
        d = lifecycle.decide(t, ended(Cause.EXIT, 1, "exit 1"), "n1", NOW)
        t = lifecycle.decide_claim(d.task, "n1", NOW) if d.state == states.QUEUED else d.task
    assert t["state"] == states.ERRORED and t["attempts"] == 2
    t = lifecycle.decide_retry(t, "ann", states.ERRORED, NOW).task
    for run in range(2):
        t = lifecycle.decide_claim(t, "n1", NOW)
        assert t["attempts"] == 3 + run
        d = lifecycle.decide(t, ended(Cause.EXIT, 1, "exit 1"), "n1", NOW)
        t = d.task
    assert d.state == states.ERRORED and "no attempt left (2 of 2)" in t["records"][-1]["reason"]


# ---- attempt text and older values --------------------------------------------------------------


def test_attempt_text_counts_failures_and_names_disruptions():
    assert lifecycle.attempt_text(task()) == "attempt 1 of 3"
    assert lifecycle.attempt_text(task(failures=1, disruptions=1)) == "attempt 2 of 3, 1 disruption"
    assert lifecycle.attempt_text(task(failures=3, disruptions=2)) == "attempt 3 of 3, 2 disruptions"
    assert lifecycle.attempt_text({"failures": 0}) == "attempt 1 of 3", "a view without max_attempts"


def test_attempt_text_agrees_with_the_records_before_and_after_a_retry():
    t = running()
    assert t["records"][-1]["reason"] == f"claimed by n1 ({lifecycle.attempt_text(t)})"
    d = lifecycle.decide(t, ended(Cause.EXIT, 1, "exit 1"), "n1", NOW)
    assert d.task["records"][-1]["reason"] == f"retry: {lifecycle.attempt_text(d.task)} next"
    t = lifecycle.decide_claim(d.task, "n1", NOW)
    assert lifecycle.attempt_text(t) == "attempt 2 of 3" and t["records"][-1]["reason"].endswith("(attempt 2 of 3)")
    killed = lifecycle.decide(t, ended(Cause.KILLED, -15, "killed by ann"), "n1", NOW).task
    assert lifecycle.attempt_text(killed) == "attempt 2 of 3", "the run a kill ended"
    retried = lifecycle.decide_retry(killed, "ann", states.RUNNING, NOW).task
    assert lifecycle.attempt_text(retried) == "attempt 1 of 3"
    again = lifecycle.decide_claim(retried, "n1", NOW)
    assert again["records"][-1]["reason"] == f"claimed by n1 ({lifecycle.attempt_text(again)})"
    assert again["attempts"] == 3


def test_values_written_before_failures_were_counted():
    old = {**task(states.QUEUED, attempts=4, retry_base=2), "records": []}
    del old["failures"], old["disruptions"]
    assert lifecycle.failures(old) == 2 and lifecycle.disruptions(old) == 0
    claimed = lifecycle.decide_claim(old, "n1", NOW)
    assert (claimed["failures"], claimed["attempts"]) == (2, 5) and "retry_base" not in claimed
    legacy_running = dict(old, state=states.RUNNING, attempts=5)
    assert lifecycle.failures(legacy_running) == 2, "the run going on is not a failure"
    d = lifecycle.decide(legacy_running, ended(Cause.EXIT, 1, "exit 1"), "n1", NOW)
    assert d.state == states.ERRORED and "retry_base" not in d.task


# ---- the transition table, over every decision ---------------------------------------------------

ALL_OUTCOMES = [ended(c, code) for c, code in FAILURE_CAUSES] + [ended(c) for c in DISRUPTION_CAUSES] + [
    ended(Cause.EXIT, 0), ended(Cause.KILLED, -15), ended(Cause.SKIPPED, -15)]


@pytest.mark.parametrize("state", states.TASK_STATES)
@pytest.mark.parametrize("used", [(0, 0), (2, 0), (0, 9), (2, 9)])
def test_every_decision_respects_the_transition_table(state: str, used: tuple[int, int]):
    """Whatever the state, the budgets used and the outcome, a decision moves only as
    conductor/states.py allows, and its markers agree with its state."""
    failed, disrupted = used
    before = dict(running(failures=failed, disruptions=disrupted), state=state)
    decisions = [lifecycle.decide(before, o, "n1", NOW) for o in ALL_OUTCOMES]
    decisions.append(lifecycle.decide_lost(before, "n1", None, "n2", NOW))
    decisions += [lifecycle.decide_lost(before, "n1", {"action": a}, "n2", NOW) for a in ("kill", "skip")]
    users: list[Decision] = []
    if state != states.RUNNING:
        users += [lifecycle.decide_kill(before, "ann", NOW), lifecycle.decide_skip(before, "ann", NOW)]
        users += [lifecycle.decide_retry(before, "ann", s, NOW) for s in (states.PENDING, states.RUNNING)]
    for d in decisions + users:
        check_moves(before, d)
        assert d.untally == (states.RUNNING if state == states.RUNNING and d.changed else d.untally)
        assert d.untally != states.RUNNING or state == states.RUNNING, "only a run ends RUNNING"
        assert d.tally in (None, d.state) and (d.tally is None or d.state in states.FINAL)
        if state != states.RUNNING:
            assert d.tally is None or any(d is u for u in users), "only a user's change writes a tally for a task not running"
    for d in users:
        assert d.changed == bool(d.task["records"][len(before["records"]):]), "a change is recorded"
