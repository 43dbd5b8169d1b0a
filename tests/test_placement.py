"""Placement: which node may hold a task (conductor.placement as a pure rule), needs as job files give
them, and, with real conductors, that tasks run only where they fit and that show says why one waits."""
from __future__ import annotations

import json
from typing import Any

import pytest

from conductor import spec
from conductor.readyqueue import ReadyQueue
from conductor.claims import Ready
from conductor.client import Client
from conductor.errors import InvalidSpec
from conductor.placement import fits, size_text, why_waiting
from harness import conductor_cli, wait_for

GIB = 1024 ** 3


def node(name: str, *, slots: int = 4, cpus: int = 8, memory: int = 16 * GIB, labels: dict[str, str] | None = None,
         containers: str | None = None) -> dict[str, Any]:
    """A node key's value, as node._info writes it (the fields placement reads)."""
    return {"name": name, "slots": slots, "cpus": cpus, "memory": memory, "memory_available": memory // 2,
            "labels": labels or {}, "containers": containers}


# ---- fits: one node --------------------------------------------------------------------------------

def test_a_node_fits_a_task_with_no_needs_and_one_it_has_room_for():
    assert fits({}, node("n1")) is None
    assert fits({"slots": 4, "cpus": 8, "memory": 16 * GIB, "labels": {"gpu": "yes"}, "node": "n1"},
                node("n1", labels={"gpu": "yes", "zone": "a"})) is None
    assert fits({"cpus": 0.5}, node("n1", cpus=1)) is None


@pytest.mark.parametrize("needs, info, reason", [
    ({"slots": 5}, node("n1"), "n1 has 4 slots, the task needs 5"),
    ({"cpus": 16}, node("n1"), "n1 has 8 CPUs, the task needs 16"),
    ({"cpus": 1.5}, node("n1", cpus=1), "n1 has 1 CPU, the task needs 1.5"),
    ({"memory": 17 * GIB}, node("n1"), "n1 has 16 GiB of memory, the task needs 17 GiB"),
    ({"labels": {"gpu": "yes"}}, node("n1"), "n1 has no label gpu=yes"),
    ({"labels": {"gpu": "yes"}}, node("n1", labels={"gpu": "no"}), "n1 has no label gpu=yes"),
    ({"node": "n2"}, node("n1"), "n1 is not node n2"),
])
def test_a_node_that_cannot_hold_a_task_says_why(needs, info, reason):
    assert fits(needs, info) == reason


def test_memory_is_judged_against_the_node_total_not_what_is_free_now():
    # what is available at claim time is the claim loop's per-claim check, not placement's
    assert fits({"memory": 12 * GIB}, node("n1", memory=16 * GIB)) is None


def test_a_container_task_needs_a_node_with_a_docker_api():
    assert fits({}, node("n1"), container=True) == "n1 cannot run container tasks (no Docker API)"
    assert fits({}, node("n1", containers="1.43"), container=True) is None
    assert fits({}, node("n1")) is None


def test_a_number_a_node_does_not_advertise_is_not_held_against_it():
    bare = {"name": "old"}  # os.cpu_count() may be None; a node key could lack a field
    assert fits({"cpus": 4, "memory": GIB, "slots": 2}, bare) is None
    assert fits({"labels": {"gpu": "yes"}}, bare) == "old has no label gpu=yes"


# ---- why_waiting: every live node -----------------------------------------------------------------

def test_nothing_to_say_when_some_live_node_can_hold_the_task():
    nodes = [node("n1"), node("n2", labels={"gpu": "yes"})]
    assert why_waiting({"labels": {"gpu": "yes"}}, nodes) is None
    assert why_waiting({}, nodes) is None
    assert why_waiting({"node": "n2"}, nodes) is None


def test_a_need_no_live_node_meets_names_the_best_there_is():
    nodes = [node("n1", memory=8 * GIB), node("n2", memory=int(23.4 * GIB), cpus=4, slots=2)]
    assert why_waiting({"memory": 1024 ** 4}, nodes) == \
        "waiting: no live node has 1 TiB of memory; largest is 23.4 GiB on n2"
    assert why_waiting({"cpus": 64}, nodes) == "waiting: no live node has 64 CPUs; most is 8 on n1"
    assert why_waiting({"slots": 6}, nodes) == "waiting: no live node has 6 slots; most is 4 on n1"
    assert why_waiting({"labels": {"gpu": "yes"}}, nodes) == "waiting: no live node has label gpu=yes"
    assert why_waiting({}, nodes, container=True) == \
        "waiting: no live node can run container tasks (none reaches a Docker API)"


def test_a_named_node_that_is_not_live_or_cannot_hold_the_task():
    nodes = [node("n1"), node("n2")]
    assert why_waiting({"node": "n9"}, nodes) == "waiting: node n9 is not live"
    assert why_waiting({"node": "n2", "labels": {"gpu": "yes"}}, nodes) == "waiting: n2 has no label gpu=yes"
    assert why_waiting({"node": "n1"}, []) == "waiting: node n1 is not live"


def test_no_live_node_at_all():
    assert why_waiting({}, []) == "waiting: no node is live"


def test_needs_met_only_on_different_nodes_list_each_node():
    nodes = [node("n1", labels={"gpu": "yes"}, memory=4 * GIB), node("n2", memory=64 * GIB)]
    assert why_waiting({"labels": {"gpu": "yes"}, "memory": 32 * GIB}, nodes) == (
        "waiting: no live node has all the task needs: n1 has 4 GiB of memory, the task needs 32 GiB; "
        "n2 has no label gpu=yes")
    many = [node(f"n{i}", memory=64 * GIB) for i in range(5)] + [node("g", labels={"gpu": "yes"})]
    text = why_waiting({"labels": {"gpu": "yes"}, "memory": 32 * GIB}, many)
    assert text is not None and text.endswith("; and 3 more")


def test_sizes_for_people():
    assert [size_text(n) for n in (512, 1536, 512 * 1024 ** 2, 1024 ** 4, 1024 ** 5)] == \
        ["512 bytes", "1.5 KiB", "512 MiB", "1 TiB", "1024 TiB"]


def test_a_pick_reads_past_tasks_the_node_cannot_hold():
    queue = ReadyQueue()
    for n in range(60):
        needs = {"labels": {"gpu": "yes"}} if n < 50 else {}
        queue.put(Ready({"id": f"j.0.{n}", "job": "j", "layer": "j.0", "user": "u", "priority": 0, "needs": needs},
                        n + 1))
    plain = node("n1")
    picked = queue.pick(4, lambda e: fits(e.task["needs"], plain) is None, lambda user, job, layer: False)
    assert len(picked) == 4 and all(int(e.id.rsplit(".", 1)[1]) >= 50 for e in picked)


# ---- needs in job files -----------------------------------------------------------------------------

def test_cpus_and_node_are_validated():
    assert spec.parse_needs({"cpus": 2, "node": "n1"}, "needs") == {"cpus": 2, "node": "n1"}
    assert spec.parse_needs({"cpus": 0.5}, "needs") == {"cpus": 0.5}
    assert spec.parse_needs({"cpus": 2.0, "node": 42}, "needs") == {"cpus": 2, "node": "42"}


@pytest.mark.parametrize("needs, field, words", [
    ({"cpus": 0}, "needs.cpus", "more than zero"),
    ({"cpus": -1}, "needs.cpus", "more than zero"),
    ({"cpus": float("nan")}, "needs.cpus", "NaN"),
    ({"cpus": float("inf")}, "needs.cpus", "infinite"),
    ({"cpus": 10 ** 30}, "needs.cpus", "the limit is 8192"),
    ({"cpus": "2"}, "needs.cpus", "a number of CPUs"),
    ({"cpus": True}, "needs.cpus", "a number of CPUs"),
    ({"node": ""}, "needs.node", "must not be empty"),
    ({"node": "a/b"}, "needs.node", "not a node name"),
    ({"node": "two words"}, "needs.node", "not a node name"),
    ({"node": ["n1"]}, "needs.node", "must be a string"),
    ({"gpus": 1}, "needs.gpus", "known: cpus, labels, memory, node, slots"),
])
def test_bad_cpus_or_node_are_refused_naming_the_field(needs, field, words):
    with pytest.raises(InvalidSpec) as info:
        spec.parse_needs(needs, "needs")
    assert info.value.field == field and words in str(info.value)


def test_cpus_and_node_are_inherited_and_merged_like_the_other_needs():
    job = spec.validate_job({"needs": {"cpus": 2, "node": "n1"}, "layers": [
        {"needs": {"memory": "1G"}, "tasks": [{"cmd": ["true"]}, {"cmd": ["true"], "needs": {"node": "n2"}}]}]})
    tasks = job["layers"][0]["tasks"]
    assert tasks[0]["needs"] == {"cpus": 2, "node": "n1", "memory": 10 ** 9}
    assert tasks[1]["needs"] == {"cpus": 2, "node": "n2", "memory": 10 ** 9}
    assert job["layers"][0]["defaults"]["needs"] == {"cpus": 2, "node": "n1", "memory": 10 ** 9}


def test_check_refuses_a_bad_cpus_with_the_field_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers:\n  - tasks:\n      - cmd: [true]\n        needs: {cpus: .nan}\n")
    run = conductor_cli("check", str(bad))
    assert run.returncode == 2 and "layers[0].tasks[0].needs.cpus" in run.stderr and "Traceback" not in run.stderr


# ---- real conductors ---------------------------------------------------------------------------------

def _show_json(client: Client, endpoint: str, some_id: str, *args: str) -> dict[str, Any]:
    run = conductor_cli("show", some_id, "--json", "--etcd", endpoint, "--namespace", client.keys.namespace,
                        "--user", client.user, *args)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _show_text(client: Client, endpoint: str, some_id: str) -> str:
    run = conductor_cli("show", some_id, "--etcd", endpoint, "--namespace", client.keys.namespace,
                        "--user", client.user)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_labelled_and_named_tasks_run_only_where_they_may(client: Client, shared_etcd, start_nodes):
    plain = start_nodes(shared_etcd.endpoint, 1, slots=2)[0]
    gpu = start_nodes(shared_etcd.endpoint, 1, slots=2, extra=["--labels", "gpu=yes"])[0]
    job = client.post({"name": "placed", "layers": [{"tasks": [
        *({"name": f"gpu{i}", "cmd": ["true"], "needs": {"labels": {"gpu": "yes"}}} for i in range(4)),
        *({"name": f"named{i}", "cmd": ["true"], "needs": {"node": plain.name, "cpus": 1}} for i in range(4))]}]})
    assert client.wait(job, timeout=90)["state"] == "COMPLETED"
    ran = {t["name"]: t["node"] for t in client.show(job)["layer_list"][0]["task_list"]}
    assert {ran[f"gpu{i}"] for i in range(4)} == {gpu.name}, ran
    assert {ran[f"named{i}"] for i in range(4)} == {plain.name}, ran


def test_a_task_no_node_can_hold_says_why_and_runs_once_a_node_that_can_joins(
        client: Client, shared_etcd, start_nodes):
    first = start_nodes(shared_etcd.endpoint, 1, slots=2)[0]
    job = client.post({"name": "waits", "layers": [{"name": "work", "tasks": [
        {"name": "plain", "cmd": ["true"]},
        {"name": "huge", "cmd": ["true"], "needs": {"memory": "1024Ti"}},
        {"name": "gpu", "cmd": ["true"], "needs": {"labels": {"gpu": "yes"}}}]}]})
    huge, gpu = f"{job}.0.1", f"{job}.0.2"
    wait_for(lambda: client.task(f"{job}.0.0")["state"] == "COMPLETED", 60, what="the plain task ran")

    # a task: its own reason, in --json and in words
    memory_reason = "waiting: no live node has 1024 TiB of memory; largest is "
    task = _show_json(client, shared_etcd.endpoint, huge)
    assert task["state"] == "QUEUED" and task["waiting"].startswith(memory_reason)
    assert task["waiting"].endswith(f" on {first.name}")
    assert memory_reason in _show_text(client, shared_etcd.endpoint, huge)
    assert _show_json(client, shared_etcd.endpoint, gpu)["waiting"] == "waiting: no live node has label gpu=yes"
    assert "waiting: no live node has label gpu=yes" in _show_text(client, shared_etcd.endpoint, gpu)

    # a job: each queued task's reason, the layer's and the job's
    tree = _show_json(client, shared_etcd.endpoint, job)
    layer = tree["layer_list"][0]
    by_name = {t["name"]: t for t in layer["task_list"]}
    assert by_name["huge"]["waiting"].startswith(memory_reason)
    assert by_name["gpu"]["waiting"] == "waiting: no live node has label gpu=yes"
    assert "waiting" not in by_name["plain"], "only a QUEUED task gets a waiting field"
    assert layer["waiting"] and tree["waiting"] == layer["waiting"]
    assert "waiting: no live node has label gpu=yes" in _show_text(client, shared_etcd.endpoint, job)

    # a layer whose page holds no queued task still says why some wait (from its ready markers)
    page = _show_json(client, shared_etcd.endpoint, f"{job}.0", "--tasks", "1")
    assert [t["name"] for t in page["task_list"]] == ["plain"]
    assert page["waiting"] and page["waiting"].startswith("waiting: ")

    # a node with the label joins: it takes the task from its cache at once; the huge one still waits
    labelled = start_nodes(shared_etcd.endpoint, 1, slots=2, extra=["--labels", "gpu=yes"])[0]
    wait_for(lambda: client.task(gpu)["state"] == "COMPLETED", 60, what="the gpu task ran on the new node")
    assert client.task(gpu)["node"] == labelled.name
    still = _show_json(client, shared_etcd.endpoint, job)
    assert still["waiting"].startswith(memory_reason) and still["state"] == "RUNNING"
    assert _show_json(client, shared_etcd.endpoint, huge)["state"] == "QUEUED"


def test_tasks_this_node_cannot_hold_do_not_keep_it_from_their_layer_mates(client: Client, shared_etcd, start_nodes):
    """A layer whose first tasks need a label no node has: the plain tasks queued behind them run."""
    start_nodes(shared_etcd.endpoint, 1, slots=2)
    job = client.post({"name": "mixed", "layers": [{"tasks": [
        *({"name": f"gpu{i}", "cmd": ["true"], "needs": {"labels": {"gpu": "yes"}}} for i in range(40)),
        *({"name": f"plain{i}", "cmd": ["true"]} for i in range(4))]}]})
    wait_for(lambda: client.counts(job)["completed"] == 4, 60, what="the plain tasks behind 40 gpu tasks ran")
    assert client.counts(job)["queued"] == 40
