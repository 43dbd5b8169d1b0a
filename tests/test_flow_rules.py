"""The pure rules of retries, deadlines and partial success (no etcd): backoff.py, the lifecycle's
use of it, deadlines.py's instants, layerplan's min_success and the spec's checks."""
from __future__ import annotations

import threading
import time

import pytest

from conductor import backoff, deadlines, ids, lifecycle, layerplan, spec, states
from conductor.errors import InvalidSpec
from conductor.lifecycle import Cause, Outcome


def running_task(**extra) -> dict:
    task = {"kind": "task", "id": "J.0.0", "job": "J", "layer": "J.0", "user": "u", "name": "t",
            "state": states.RUNNING, "attempts": 1, "failures": 0, "disruptions": 0, "max_attempts": 5,
            "records": []}
    return {**task, **extra}


def test_delays_grow_by_the_factor_up_to_the_cap():
    policy = {"delay": 1.0, "backoff": 2.0, "max_delay": 5.0, "jitter": False}
    assert [backoff.delay(policy, n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert backoff.delay(None, 3) == 0
    assert backoff.delay(policy, 10_000) == 5, "a huge failure count does not overflow"


def test_jitter_stays_within_its_band_and_is_the_same_for_the_same_failure():
    policy = {"delay": 10.0, "backoff": 1.0, "max_delay": 10.0, "jitter": True}
    drawn = [backoff.delay(policy, 1, f"task-{i}") for i in range(200)]
    assert all(5.0 <= d <= 10.0 for d in drawn)
    assert len(set(drawn)) > 100, "spread out"
    assert backoff.delay(policy, 1, "task-7") == backoff.delay(policy, 1, "task-7")


def test_a_failure_with_a_retry_policy_is_queued_not_before_its_delay():
    task = running_task(retry={"delay": 4.0, "backoff": 2.0, "max_delay": 60.0, "jitter": False}, failures=1)
    d = lifecycle.decide(task, Outcome(Cause.EXIT, "exit 1", exit_code=1), "n0", 1000.0)
    assert d.state == states.QUEUED and d.untally == states.RUNNING
    assert d.task["not_before"] == 1008.0  # second failure: 4 * 2
    assert backoff.due(d.task, 1007.9) == 1008.0 and backoff.due(d.task, 1008.0) is None
    assert "next try due at" in backoff.waiting(d.task, 1000.0)
    claimed = lifecycle.decide_claim(d.task, "n1", 1008.5)
    assert "not_before" not in claimed, "a run clears the delay"


def test_fail_on_ends_at_once_and_retry_on_retries_only_its_codes():
    task = running_task(fail_on=[3], retry_on=[75])
    d = lifecycle.decide(task, Outcome(Cause.EXIT, "exit 3", exit_code=3), "n0", 1.0)
    assert d.state == states.ERRORED and "exit code 3 is in fail_on" in d.task["reason"]
    d = lifecycle.decide(task, Outcome(Cause.EXIT, "exit 75", exit_code=75), "n0", 1.0)
    assert d.state == states.QUEUED
    d = lifecycle.decide(task, Outcome(Cause.EXIT, "exit 1", exit_code=1), "n0", 1.0)
    assert d.state == states.ERRORED and "not in retry_on" in d.task["reason"]
    d = lifecycle.decide(task, Outcome(Cause.TIMEOUT, "timed out"), "n0", 1.0)
    assert d.state == states.QUEUED, "a failure without an exit code is not matched by the lists"


def test_a_users_retry_runs_at_once():
    task = {**running_task(state=states.ERRORED), "not_before": 2e9}
    d = lifecycle.decide_retry(task, "me", states.RUNNING, 1.0)
    assert "not_before" not in d.task


def test_start_by_counts_from_the_queueing_and_only_before_the_first_run():
    task = {"id": "J.0.0", "job": "J", "state": states.QUEUED, "attempts": 0, "start_within": 10.0,
            "records": [{"state": states.PENDING, "at": 1.0}, {"state": states.QUEUED, "at": 5.0}]}
    assert deadlines.start_by(task) == 15.0
    assert deadlines.start_by({**task, "attempts": 1}) is None
    d = lifecycle.decide_expired({**task, "kind": "task", "user": "u"}, "not started within 10s", 16.0)
    assert d.state == states.ERRORED and d.tally == states.ERRORED and d.untally is None
    paused = {**task, "records": [*task["records"], {"state": states.QUEUED, "at": 9.0}]}
    assert deadlines.start_by(paused) == 15.0, "a record that keeps the state (a pause) restarts nothing"
    retried = lifecycle.decide_retry({**d.task, "state": states.ERRORED}, "me", states.RUNNING, 30.0)
    assert deadlines.start_by(retried.task) == 40.0, "a user's retry queues it afresh"


def test_a_deadline_is_an_instant_from_posting_or_as_given():
    job_id = ids.new_job_id(1_000_000.0)
    assert deadlines.deadline_at({"kind": "job", "id": job_id, "deadline": {"after": 7200.0}}) == 1_007_200.0
    assert deadlines.deadline_at({"kind": "task", "job": job_id, "deadline": {"at": 5.0}}) == 5.0
    assert deadlines.deadline_at({"kind": "job", "id": job_id}) is None


def test_min_success_counts_whole_tasks():
    layer = {"tasks": 20, "min_success": 0.95}
    assert layerplan.enough_done(layer, 1) and not layerplan.enough_done(layer, 2)
    assert not layerplan.enough_done({**layer, "killed_at": 1.0}, 0), "a kill is never a success"
    assert not layerplan.enough_done({"tasks": 20}, 1)


def _layer_plan(errored: int, tasks: int = 10, share: float = 0.9) -> layerplan.Plan:
    layer = {"kind": "layer", "id": "J.0", "index": 0, "name": "l", "order": 0, "state": states.RUNNING,
             "on_error": "fail", "tasks": tasks, "enqueued": True, "min_success": share, "records": []}
    job = {"kind": "job", "id": "J", "name": "j", "state": states.RUNNING, "records": [],
           "layers": [{"id": "J.0", "name": "l", "order": 0, "state": states.RUNNING, "on_error": "fail",
                       "tasks": tasks}]}
    return layerplan.plan(job, {0: layer}, {"J.0": layerplan.LayerCounts(errored=errored)}, "n0", 1.0)


def test_a_drained_layer_completes_with_failures_below_its_share_and_errors_above():
    ok = _layer_plan(errored=1)
    assert ok.layers[0]["state"] == states.COMPLETED and ok.job["state"] == states.COMPLETED
    assert "9 of 10 tasks done, 1 errored" in ok.layers[0]["records"][-1]["reason"]
    bad = _layer_plan(errored=2)
    assert bad.layers[0]["state"] == states.ERRORED and bad.job["state"] == states.ERRORED


@pytest.mark.parametrize("field, value, where", [
    ("retry", {"delay": "soon"}, "retry.delay"),
    ("retry", {"backoff": 0.5}, "retry.backoff"),
    ("retry", {"delay": "10m", "max_delay": "1m"}, "retry.max_delay"),
    ("retry", {"tries": 3}, "retry.tries"),
    ("retry_on", [0], "retry_on[0]"),
    ("fail_on", ["x"], "fail_on[0]"),
    ("start_within", "-5s", "start_within"),
    ("deadline", "2001-01-01T00:00:00Z", "deadline"),
    ("deadline", "2031-01-01T00:00:00", "deadline"),
])
def test_bad_flow_values_are_refused_naming_the_field(field, value, where):
    with pytest.raises(InvalidSpec) as err:
        spec.validate_job({field: value, "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    assert err.value.field == where


def test_an_exit_code_in_both_lists_and_a_bad_share_are_refused():
    with pytest.raises(InvalidSpec) as err:
        spec.validate_job({"retry_on": [1], "layers": [{"tasks": [{"cmd": ["true"], "fail_on": [1]}]}]})
    assert err.value.field == "layers[0].tasks[0].fail_on"
    with pytest.raises(InvalidSpec) as err:
        spec.validate_job({"layers": [{"min_success": 0, "tasks": [{"cmd": ["true"]}]}]})
    assert err.value.field == "layers[0].min_success"
    with pytest.raises(InvalidSpec) as err:
        spec.validate_job({"layers": [{"deadline": "1h", "tasks": [{"cmd": ["true"]}]}]})
    assert err.value.field == "layers[0].deadline", "a deadline is the job's"


def test_flow_fields_are_inherited_by_tasks():
    job = spec.validate_job({"retry": "30s", "deadline": "2h", "layers": [
        {"start_within": "1m", "tasks": [{"cmd": ["true"]}]}]})
    task = job["layers"][0]["tasks"][0]
    assert task["retry"] == {"delay": 30.0, "backoff": 1.0, "max_delay": 30.0, "jitter": False}
    assert task["start_within"] == 60.0 and task["deadline"] == {"after": 7200.0}
    assert job["deadline"] == {"after": 7200.0}


def test_due_timers_wake_at_the_time_not_before():
    woken: list[tuple[object, float]] = []
    event = threading.Event()

    def wake(key: object) -> None:
        woken.append((key, time.time()))
        event.set()

    timers = backoff.DueTimers(wake)
    try:
        at = time.time() + 0.3
        timers.at(at, "a")
        timers.at(at, "a")  # the same alarm twice wakes once
        assert event.wait(5)
        time.sleep(0.1)
        assert [k for k, _ in woken] == ["a"] and woken[0][1] >= at
    finally:
        timers.stop()
