"""A layer's tasks as chunks (conductor/chunks.py) and what a node offers to claim from them
(conductor/readyqueue.py, conductor/queued.py): pure rules, no etcd."""
from __future__ import annotations

from conductor import chunks, codec, model, states
from conductor.keys import Keys
from conductor.ops import KV
from conductor.queued import Queued
from conductor.readyqueue import Chunked

K = Keys("/t/")
LAYER = {"kind": "layer", "id": "j.0", "job": "j", "index": 0, "user": "u", "state": states.RUNNING,
         "started": 100.0, "tasks": 2500, "committed": ["add-1"]}


def fresh(number: int, **spec: object) -> dict:
    return model.new_task(LAYER, number, {"name": f"task-{number}", "cmd": ["true"], **spec})


def test_a_fresh_task_is_its_differences_and_comes_back_whole():
    task = fresh(7)
    assert chunks.spec_of(task, 7) == {"cmd": ["true"]}, "only what differs from a fresh task"
    back = chunks.task_of(LAYER, 7, chunks.spec_of(task, 7))
    assert back == chunks.compact(task), "rebuilt as post would have stored it"
    named = fresh(8, name="fetch", priority=3, env={"A": "1"}, max_attempts=5)
    spec = chunks.spec_of(named, 8)
    assert spec == {"name": "fetch", "cmd": ["true"], "priority": 3, "env": {"A": "1"}, "max_attempts": 5}
    queued = chunks.task_of(LAYER, 8, spec, states.QUEUED)
    assert queued["state"] == states.QUEUED and queued["records"][-1]["at"] == 100.0, "queued when its layer started"
    assert queued["id"] == "j.0.8" and queued["priority"] == 3


def test_cut_keeps_chunks_small_and_numbered():
    specs = [{"cmd": ["true", str(n)]} for n in range(2500)]
    cut = chunks.cut(specs)
    assert [first for first, _ in cut] == [0, 1000, 2000] and sum(len(part) for _, part in cut) == 2500
    big = [{"cmd": ["x" * 90_000]} for _ in range(5)]
    assert [len(part) for _, part in chunks.cut(big, 10)] == [2, 2, 1] and chunks.cut(big, 10)[1][0] == 12
    first, part, token = chunks.read(chunks.value(5, specs[:3], "add-1"))
    assert (first, part, token) == (5, specs[:3], "add-1")


def test_a_running_layer_offers_its_keyless_tasks_best_priority_first_and_not_taken_ones():
    c = Chunked(LAYER)
    specs = [{"cmd": ["true"]} for _ in range(1000)]
    c.add(0, specs, chunks.value(0, specs))
    mixed = [{"cmd": ["true"], "priority": 5 if n % 2 else 0} for n in range(10)]
    c.add(1000, mixed, chunks.value(1000, mixed))
    assert c.left == {0: 1005, 5: 5} and c.total_left() == 1010
    c.take(3)
    c.take(1001)
    c.take(1001)
    assert c.left == {0: 1004, 5: 4}
    assert list(c.numbers(5)) == [1003, 1005, 1007, 1009]
    for n in range(0, 900):
        c.take(n)
    assert next(c.numbers(0)) == 900 and next(c.numbers(0)) == 900, "the taken ones in front, passed once"
    more = [{"cmd": ["true"]}] * 5
    c.add(2000, more, chunks.value(2000, more))
    assert list(c.numbers(0))[-5:] == list(range(2000, 2005)) and next(c.numbers(0)) == 900
    entry = c.entry(1003)
    assert entry.mod_revision == 0 and entry.task["priority"] == 5 and entry.task["state"] == states.QUEUED
    assert not c.has(3) and c.has(904) and not c.has(1010)


def test_queued_starts_a_layer_once_its_job_is_seen_and_parks_its_keys_before():
    seen: list[str] = []
    q = Queued(lambda task: seen.append(task["id"]))
    specs = [{"cmd": ["true"]} for _ in range(3)]
    q.chunk("j.0", 0, chunks.value(0, specs))
    q.layer("j.0", LAYER)
    paused = {**fresh(1), "state": states.QUEUED, "paused_at": 5.0}
    q.task("j.0.1", paused, KV(K.task("u", "j.0.1"), codec.pack(paused), 9, 9, 1))
    q.settle()
    assert len(q.ready) == 0, "the job key is not there yet: nothing of it is offered"
    q.job("j", True)
    q.settle()
    assert len(q.ready) == 3 and q.ready.keyed("j.0.1") is not None and q.ready.get("j.0.0").mod_revision == 0
    assert seen == ["j.0.1"]
    running = {**paused, "state": states.RUNNING}
    q.task("j.0.1", running, KV(K.task("u", "j.0.1"), codec.pack(running), 9, 12, 2))
    assert len(q.ready) == 2 and q.busy("j.0")
    q.layer("j.0", {**LAYER, "state": states.COMPLETED})
    q.settle()
    assert len(q.ready) == 0 and not q.busy("j.0"), "an ended layer offers nothing"
