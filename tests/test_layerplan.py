"""The settle plan (conductor.layerplan) as a pure rule: no etcd, values built in memory."""
from __future__ import annotations

import copy
from typing import Any

from conductor import batch, board, chunks, codec, model, states
from conductor.board import Board
from conductor.keys import Keys
from conductor.layerplan import LayerCounts, Message, Plan, Transition, plan

NOW = 1_000_000.0
DRAINED = LayerCounts()


def job_of(*layers: dict[str, Any], **job_extra: Any) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """A posted job (all PENDING): each layer given as {"order", "n" (tasks), and layer fields}."""
    specs = [{"name": f"l{i}", "order": spec.get("order", i),
              "tasks": [{"name": f"t{n}", "cmd": ["true"]} for n in range(spec.get("n", 1))],
              **{k: v for k, v in spec.items() if k not in ("order", "n")}} for i, spec in enumerate(layers)]
    job = model.new_job("j1", {"name": "j", "layers": specs, **job_extra}, "u", {"kind": "api"})
    values = {i: model.new_layer(job, i, spec) for i, spec in enumerate(specs)}
    job["layers"] = [model.layer_summary(layer) for layer in values.values()]
    return job, values


def applied(job: dict[str, Any], layers: dict[int, dict[str, Any]], p: Plan) -> None:
    """Take a plan's values as the new state (what a successful write does)."""
    job.clear()
    job.update(copy.deepcopy(p.job))
    for i, layer in p.layers.items():
        layers[i] = copy.deepcopy(layer)


def running(job: dict[str, Any], layers: dict[int, dict[str, Any]], *indices: int) -> None:
    """Start the job and mark the given layers RUNNING and queued (as a first plan and enqueue would)."""
    p = plan(job, layers, {}, "n", NOW)
    applied(job, layers, p)
    for i in indices:
        layers[i]["enqueued"] = True
        assert layers[i]["state"] == states.RUNNING


def lid(i: int) -> str:
    return f"j1.{i}"


def states_of(p: Plan) -> dict[int, str]:
    return {i: layer["state"] for i, layer in p.layers.items()}


def test_first_plan_starts_the_lowest_order_and_changes_nothing_it_was_given():
    job, layers = job_of({"order": 1}, {"order": 2})
    before = copy.deepcopy((job, layers))
    p = plan(job, layers, {}, "n", NOW)
    assert (job, layers) == before, "the plan must not change its inputs"
    assert p.started == (Transition(0, states.RUNNING, "every layer of lower order is done"),)
    assert p.ended == () and p.layers[0]["started"] == NOW and p.layers[0]["enqueued"] is True
    assert p.job["state"] == states.RUNNING and p.job_reason == "a layer started" and p.job["started"] == NOW
    assert p.job["layers"][0]["state"] == states.RUNNING and p.active is None
    assert p.layers[0]["records"][-1] == {"state": states.RUNNING, "reason": "every layer of lower order is done",
                                          "node": "n", "at": NOW}


def test_a_drained_layer_completes_and_the_next_order_starts():
    job, layers = job_of({}, {})
    running(job, layers, 0)
    p = plan(job, layers, {lid(0): DRAINED}, "n", NOW)
    assert p.ended == (Transition(0, states.COMPLETED, "every task is done", drained=True),)
    assert [t.index for t in p.started] == [1] and p.drained == [0]
    assert p.layers[0]["ended"] == NOW and p.job["state"] == states.RUNNING and p.job_reason is None


def test_a_layer_not_drained_or_not_queued_does_not_end():
    job, layers = job_of({}, {})
    running(job, layers, 0)
    assert plan(job, layers, {lid(0): LayerCounts(ready=1)}, "n", NOW).empty
    assert plan(job, layers, {lid(0): LayerCounts(claimed=1)}, "n", NOW).empty
    assert plan(job, layers, {}, "n", NOW).empty, "no counts read: nothing is known to be drained"
    layers[0]["enqueued"] = False
    assert plan(job, layers, {lid(0): DRAINED}, "n", NOW).empty, "a layer still being queued never ends"


def test_a_drained_layer_with_an_errored_task_errors_the_job():
    job, layers = job_of({}, {}, on_failure=["job-failed"])
    running(job, layers, 0)
    p = plan(job, layers, {lid(0): LayerCounts(errored=2)}, "n", NOW)
    assert p.ended == (Transition(0, states.ERRORED, "2 task(s) errored", drained=True),)
    assert p.started == () and p.layers.keys() == {0}
    assert p.job["state"] == states.ERRORED and p.job_reason == "a layer errored and nothing else can run"
    assert p.job["ended"] == NOW and p.active == "delete"
    assert p.messages == (Message(("job-failed",), "failure", f"job{len(p.job['records'])}"),)


def test_policy_continue_completes_the_layer_and_goes_on():
    job, layers = job_of({"on_error": "continue"}, {})
    running(job, layers, 0)
    p = plan(job, layers, {lid(0): LayerCounts(errored=2)}, "n", NOW)
    assert p.ended == (Transition(0, states.COMPLETED, "every task is done (2 errored, policy continue)", True),)
    assert [t.index for t in p.started] == [1]


def test_killed_and_skipped_flags_decide_a_drained_layer():
    job, layers = job_of({}, {})
    running(job, layers, 0)
    layers[0]["killed_at"] = NOW - 1
    p = plan(job, layers, {lid(0): DRAINED}, "n", NOW)
    assert p.ended == (Transition(0, states.ERRORED, "killed by a user", True),) and p.started == ()
    assert p.job["state"] == states.ERRORED and p.job["layers"][0]["killed"] is True
    del layers[0]["killed_at"]
    layers[0]["skipped_at"] = NOW - 1
    p = plan(job, layers, {lid(0): LayerCounts(errored=3)}, "n", NOW)
    assert p.ended == (Transition(0, states.SKIPPED, "skipped by a user", True),)
    assert [t.index for t in p.started] == [1] and p.job["state"] == states.RUNNING


def test_flagged_pending_layers_end_when_their_turn_comes():
    job, layers = job_of({}, {"skipped_at": 1.0}, {}, {"order": 3}, {"order": 3, "killed_at": 1.0})
    layers[1]["skipped_at"] = layers[4]["killed_at"] = 1.0
    running(job, layers, 0)
    p = plan(job, layers, {lid(0): DRAINED}, "n", NOW)
    assert [(t.index, t.state, t.drained) for t in p.ended] == [(0, states.COMPLETED, True),
                                                               (1, states.SKIPPED, False)]
    assert [t.index for t in p.started] == [2]
    applied(job, layers, p)
    layers[2]["enqueued"] = True
    p = plan(job, layers, {lid(2): DRAINED}, "n", NOW)
    assert [(t.index, t.state) for t in p.ended] == [(2, states.COMPLETED), (4, states.ERRORED)]
    assert [t.index for t in p.started] == [3], "a layer of the same order still starts beside a killed one"
    assert p.layers[4]["started"] == p.layers[4]["ended"] == NOW and p.layers[4]["records"][-1]["reason"] == \
        "killed by a user"


def test_layers_of_equal_order_start_together_and_the_next_order_waits():
    job, layers = job_of({"order": 0}, {"order": 1}, {"order": 1}, {"order": 2})
    running(job, layers, 0)
    p = plan(job, layers, {lid(0): DRAINED}, "n", NOW)
    assert [t.index for t in p.started] == [1, 2] and 3 not in p.layers
    applied(job, layers, p)
    layers[1]["enqueued"] = layers[2]["enqueued"] = True
    p = plan(job, layers, {lid(1): DRAINED, lid(2): LayerCounts(ready=4)}, "n", NOW)
    assert [t.index for t in p.ended] == [1] and p.started == (), "order 2 waits for every layer of order 1"


def test_empty_layers_complete_at_once_and_the_next_order_starts_in_the_same_plan():
    job, layers = job_of({"n": 0}, {"n": 0}, {"n": 2}, {"n": 0})
    p = plan(job, layers, {}, "n", NOW)
    assert [(t.index, t.state, t.reason) for t in p.ended] == [
        (0, states.COMPLETED, "it has no tasks"), (1, states.COMPLETED, "it has no tasks")]
    assert [t.index for t in p.started] == [2] and p.job["state"] == states.RUNNING
    applied(job, layers, p)
    layers[2]["enqueued"] = True
    p = plan(job, layers, {lid(2): DRAINED}, "n", NOW)
    assert [t.index for t in p.ended] == [2, 3] and p.job["state"] == states.COMPLETED
    assert p.job_reason == "every layer is done" and p.active == "delete"
    only_empty, layers = job_of({"n": 0})
    assert plan(only_empty, layers, {}, None, NOW).job["state"] == states.COMPLETED


def test_a_paused_layer_or_job_waits_even_when_empty():
    job, layers = job_of({}, {"n": 0, "paused": True}, {})
    running(job, layers, 0)
    p = plan(job, layers, {lid(0): DRAINED}, "n", NOW)
    assert [t.index for t in p.ended] == [0] and p.started == () and 1 not in p.layers
    assert p.job["state"] == states.RUNNING
    paused, layers = job_of({}, paused=True)
    p = plan(paused, layers, {}, "n", NOW)
    assert p.empty and p.layers == {}


def test_an_errored_layer_completes_when_its_errored_tasks_were_skipped():
    job, layers = job_of({}, {})
    running(job, layers, 0)
    applied(job, layers, plan(job, layers, {lid(0): LayerCounts(errored=1)}, "n", NOW))
    assert job["state"] == states.ERRORED and layers[0]["state"] == states.ERRORED
    assert plan(job, layers, {lid(0): LayerCounts(errored=1)}, "n", NOW).empty, "still errored: nothing to do"
    p = plan(job, layers, {lid(0): LayerCounts(errored=0)}, "n", NOW)
    assert p.ended == (Transition(0, states.COMPLETED, "every task is done", True),)
    assert [t.index for t in p.started] == [1]
    assert p.job["state"] == states.RUNNING and p.was == states.ERRORED and p.active == "put"
    layers[0]["killed_at"] = 1.0
    assert plan(job, layers, {lid(0): DRAINED}, "n", NOW).empty, "a killed layer is not looked at again"


def test_messages_for_layer_and_job_ends():
    job, layers = job_of({"on_success": ["a-done"], "on_failure": ["a-failed"]}, {"n": 0, "on_success": ["b"]},
                         on_success=["all-done"], on_failure=["job-failed"])
    running(job, layers, 0)
    p = plan(job, layers, {lid(0): DRAINED}, "n", NOW)
    assert p.messages == (Message(("a-done",), "success", "layer0"), Message(("b",), "success", "layer1"),
                          Message(("all-done",), "success", f"job{len(p.job['records'])}"))
    p = plan(job, layers, {lid(0): LayerCounts(errored=1)}, "n", NOW)
    assert p.messages == (Message(("a-failed",), "failure", "layer0"),
                          Message(("job-failed",), "failure", f"job{len(p.job['records'])}"))


def test_nothing_to_do_is_an_empty_plan():
    job, layers = job_of({}, {})
    running(job, layers, 0)
    p = plan(job, layers, {lid(0): LayerCounts(ready=3, claimed=1)}, "n", NOW)
    assert p.empty and p.ended == p.started == p.messages == () and p.layers == {}
    done, layers = job_of({"n": 0})
    applied(done, layers, plan(done, layers, {}, None, NOW))
    assert plan(done, layers, {}, None, NOW).empty


def test_a_limit_moves_fewer_layers_and_the_next_plan_goes_on():
    job, layers = job_of(*([{"order": 0}] * 3), {"order": 1, "n": 0}, {"order": 2})
    running(job, layers, 0, 1, 2)
    counts = {lid(i): DRAINED for i in range(3)}
    p = plan(job, layers, counts, "n", NOW, limit=2)
    assert [t.index for t in p.ended] == [0, 1] and p.started == () and len(p.layers) == 2
    applied(job, layers, p)
    p = plan(job, layers, counts, "n", NOW, limit=2)
    assert [t.index for t in p.ended] == [2, 3] and p.started == ()
    applied(job, layers, p)
    p = plan(job, layers, counts, "n", NOW, limit=2)
    assert [t.index for t in p.started] == [4]


def test_advance_applies_the_plan_in_place_for_a_job_being_posted():
    job, layers = job_of({"n": 0}, {})
    emptied: list[int] = []
    assert board.advance(job, layers, "n", emptied) == [1] and emptied == [0]
    assert job["state"] == states.RUNNING and layers[1]["state"] == states.RUNNING
    assert layers[0]["state"] == states.COMPLETED and job["layers"][0]["state"] == states.COMPLETED


def bulky_tasks(count: int, env_bytes: int = 24 * 1024) -> list[dict[str, Any]]:
    job, layers = job_of({}, {"n": count})
    tasks = []
    for n in range(count):
        task = model.new_task(layers[1], n, {"name": f"t{n}", "cmd": ["true"], "env": {"BIG": "x" * env_bytes}})
        tasks.append(task)
    return tasks


def test_a_layer_of_bulky_tasks_is_posted_in_chunks_that_fit_etcd():
    """80 (and 200) tasks of 24 KB env each: one request could not hold them; every chunk is a
    separate key of at most CHUNK_BYTES of specs, and the chunks go in groups that fit."""
    b = Board(None, Keys("/x/"))  # type: ignore[arg-type]  # building ops reads nothing
    _, layers = job_of({}, {"n": 200})
    for count in (80, 200):
        tasks = bulky_tasks(count)
        ops = b._chunk_ops([layers[1]], [tasks])
        assert not batch.fits(ops), "the whole layer must not fit in one txn"
        values = [codec.unpack(op.value) for op in ops]
        assert sum(len(v["specs"]) for v in values) == count and [v["first"] for v in values] == sorted(
            v["first"] for v in values)
        assert all(batch.op_size(op) <= chunks.CHUNK_BYTES + 1024 for op in ops)
        groups = list(batch.fit(batch.Item([op]) for op in ops))
        assert len(groups) > 1 and all(batch.fits(g.ops, g.compare) for g in groups)
        assert values[0]["specs"][0]["env"] == {"BIG": "x" * 24 * 1024}, "a chunk keeps what a task has of its own"
    assert all(t["state"] == states.PENDING for t in tasks), "posting works on copies"
