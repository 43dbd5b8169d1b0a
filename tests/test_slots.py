"""The default slots (conductor/runtable.py, docs/design.md "Slots"): tasks of short layers use
every slot, tasks of other layers no more than the CPU count; an explicit --slots is plain."""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from conductor.claimer import Claimer
from conductor.client import Client
from conductor.runtable import SHORT, RunTable
from conductor.settings import SLOTS_PER_CPU, NodeSettings


def run(task_id: str, layer: str, slots: int = 1) -> Any:
    task = {"id": task_id, "layer": layer, "needs": {"slots": slots}}
    return SimpleNamespace(id=task_id, handle=f"h-{task_id}", claimed=SimpleNamespace(task=task))


def rule(table: RunTable) -> Any:
    return Claimer(SimpleNamespace(table=table))._long_rule()  # type: ignore[arg-type]


def task(layer: str, slots: int = 1) -> dict:
    return {"layer": layer, "needs": {"slots": slots}}


def test_default_settings_give_short_layers_slots_per_cpu_and_long_ones_the_cpu_count():
    settings = NodeSettings()
    cpus = os.cpu_count() or 1
    assert (settings.slots, settings.long_slots) == (SLOTS_PER_CPU * cpus, cpus)


def test_a_layer_not_seen_yet_is_held_to_the_long_slots_until_one_of_its_tasks_ran_short():
    table = RunTable(16, 2)
    a, b = run("j.0.0", "L"), run("j.0.1", "L")
    accept = rule(table)
    assert [accept(task("L"), 1) for _ in range(3)] == [True, True, False]  # within one batch too
    table.add(a)
    table.add(b)
    assert table.long_free() == 0 and not rule(table)(task("L"), 1)
    table.ended(a, SHORT / 10)  # ran short: its layer is short from now on
    assert table.is_short("L")
    accept = rule(table)
    assert all(accept(task("L"), 1) for _ in range(10))
    assert table.long_free() == 1  # b still holds a long slot: it was claimed before L was known short
    table.ended(b, SHORT * 5)  # the last task of L ran long: L is long again
    assert not table.is_short("L") and table.long_free() == 2


def test_a_task_bigger_than_the_long_slots_takes_the_node_alone():
    table = RunTable(16, 2)
    accept = rule(table)
    assert accept(task("big", 4), 4) and not accept(task("big", 4), 4)
    table.add(run("j.0.0", "other"))
    assert not rule(table)(task("big", 4), 4)


def test_explicit_slots_are_plain():
    table = RunTable(3, 3)
    accept = rule(table)
    assert all(accept(task("L"), 1) for _ in range(5))  # the rule adds nothing; free slots decide


def most_at_once(client: Client, job: str) -> int:
    """The most processes of a job's tasks that ran at once, from each task's start and exit as its
    node recorded them (etcd's RUNNING count also holds a task whose process has exited until its
    outcome is committed, by which time the freed slot may run the next)."""
    tasks = client.show(job, tasks=0)["layer_list"][0]["task_list"]
    moments = sorted([(t["ended"], -1) for t in tasks] + [(t["started"], 1) for t in tasks])  # an end first
    most = now = 0
    for _, step in moments:
        now += step
        most = max(most, now)
    return most


def test_a_default_node_runs_short_tasks_beyond_its_cpu_count_and_long_ones_within_it(client: Client, shared_etcd: Any,
                                                                                   start_nodes: Any):
    cpus = os.cpu_count() or 1
    start_nodes(shared_etcd.endpoint, 1, slots=0)  # no --slots: the defaults
    short = client.post({"name": "short", "layers": [{"tasks": [{"cmd": ["sleep", "0.3"]} for _ in range(12 * cpus)]}]})
    assert client.wait(short, timeout=120)["state"] == "COMPLETED"
    assert most_at_once(client, short) > cpus, "short tasks are not held to the CPU count"
    long = client.post({"name": "long", "layers": [{"tasks": [{"cmd": ["sleep", "2"]} for _ in range(3 * cpus)]}]})
    assert client.wait(long, timeout=120)["state"] == "COMPLETED"
    assert most_at_once(client, long) == cpus, "long tasks run within the CPU count, using all of it"
