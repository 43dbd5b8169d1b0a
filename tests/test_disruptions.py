"""Runs ended by a lost node are disruptions, not failures: real conductors, real etcd, kill -9.

A task whose node dies under it must not use up ``max_attempts`` (that budget is for the task's
own failures), but must still end when its node keeps dying (``max_disruptions``).
"""
from __future__ import annotations

from pathlib import Path

from conductor.client import Client
from harness import wait_for

LONG = 120  # seconds a run sleeps while we kill its node; far longer than any wait here


def starts(marks: Path) -> list[str]:
    return marks.read_text().splitlines() if marks.exists() else []


def lose_nodes(start_nodes, endpoint: str, marks: Path, times: int) -> None:
    """Start a node, wait until it runs the task, kill -9 it; ``times`` times in a row. Each new
    node recovers the run its predecessor lost (once that lease expires) and claims it again."""
    for i in range(times):
        node = start_nodes(endpoint, 1, ttl=2)[0]
        wait_for(lambda: f"start {node.name} {i + 1}" in starts(marks), 60, 0.1,
                 f"run {i + 1} started on {node.name}")
        node.kill9()


def test_a_task_whose_node_dies_three_times_still_completes(client: Client, shared_etcd, start_nodes,
                                                             tmp_path: Path):
    marks = tmp_path / "marks.txt"
    script = (f'echo "start $CONDUCTOR_NODE $CONDUCTOR_ATTEMPT" >> {marks}; '
              f'if [ "$CONDUCTOR_ATTEMPT" -le 3 ]; then sleep {LONG}; fi')
    job = client.post({"name": "unlucky", "layers": [{"tasks": [
        {"cmd": ["sh", "-c", script], "max_attempts": 1}]}]})
    lose_nodes(start_nodes, shared_etcd.endpoint, marks, 3)
    start_nodes(shared_etcd.endpoint, 1, ttl=2)
    assert client.wait(job, timeout=90)["state"] == "COMPLETED"
    task = client.task(f"{job}.0.0")
    assert (task["attempts"], task["failures"], task["disruptions"]) == (4, 0, 3)
    lost = [r["reason"] for r in task["records"] if "was lost" in r["reason"]]
    assert len(lost) == 3 and all("not counted as a failed attempt" in r for r in lost), lost
    assert "disruption 3 of 10" in lost[-1]
    assert task["records"][-1]["reason"].endswith("(attempt 1 of 1, 3 disruptions)")


def test_a_task_whose_node_keeps_dying_ends_after_max_disruptions(client: Client, shared_etcd, start_nodes,
                                                                    tmp_path: Path):
    marks = tmp_path / "marks.txt"
    script = f'echo "start $CONDUCTOR_NODE $CONDUCTOR_ATTEMPT" >> {marks}; sleep {LONG}'
    job = client.post({"name": "doomed", "layers": [{"tasks": [
        {"cmd": ["sh", "-c", script], "max_disruptions": 2}]}]})
    lose_nodes(start_nodes, shared_etcd.endpoint, marks, 2)
    start_nodes(shared_etcd.endpoint, 1, ttl=2)  # recovers the second loss: the last one allowed
    assert client.wait(job, timeout=90)["state"] == "ERRORED"
    task = client.task(f"{job}.0.0")
    assert task["state"] == "ERRORED" and (task["failures"], task["disruptions"]) == (0, 2)
    reason = task["records"][-1]["reason"]
    assert "was lost" in reason and reason.endswith("disrupted 2 times (node lost, fenced or handed back); giving up")
    assert len(starts(marks)) == 2, "it was not run again after its last disruption"
