"""Conductors as real processes against real etcd: the behaviour a user relies on."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from conductor.client import Client
from harness import wait_for


def shell(script: str, **extra) -> dict:
    return {"cmd": ["sh", "-c", script], **extra}


def test_200_tasks_over_3_conductors_each_exactly_once(client: Client, shared_etcd, start_nodes, tmp_path: Path):
    out = tmp_path / "ids.txt"
    start_nodes(shared_etcd.endpoint, 3, slots=3)
    job = client.post({"name": "many", "layers": [
        {"name": "all", "tasks": [shell(f'echo "$CONDUCTOR_TASK_ID $CONDUCTOR_NODE" >> {out}') for _ in range(200)]}]})
    final = client.wait(job, timeout=90)
    assert final["state"] == "COMPLETED"
    lines = out.read_text().split("\n")[:-1]
    ids = [line.split()[0] for line in lines]
    assert sorted(ids) == sorted(f"{job}.0.{i}" for i in range(200))  # every id, exactly once
    assert len({line.split()[1] for line in lines}) == 3, "all three conductors took work"
    counts = client.counts(job)
    assert counts["completed"] == 200 and counts["errored"] == 0 and counts["running"] == 0


def test_layers_run_in_order_and_equal_orders_together(client: Client, shared_etcd, start_nodes, tmp_path: Path):
    log = tmp_path / "events.txt"
    stamp = f'echo "$1 $(date +%s.%N)" >> {log}'

    def task(label: str, sleep: float) -> dict:
        return {"cmd": ["sh", "-c", f'{stamp.replace("$1", label + "-start")}; sleep {sleep}; '
                                    f'{stamp.replace("$1", label + "-end")}']}

    start_nodes(shared_etcd.endpoint, 2, slots=2)
    job = client.post({"name": "order", "layers": [
        {"name": "first", "order": 0, "tasks": [task("a", 0.5)]},
        {"name": "left", "order": 5, "tasks": [task("b", 1.0)]},
        {"name": "right", "order": 5, "tasks": [task("c", 1.0)]},
        {"name": "last", "order": 9, "tasks": [task("d", 0.1)]}]})
    assert client.wait(job, timeout=60)["state"] == "COMPLETED"
    at = {label: float(ts) for label, ts in (line.split() for line in log.read_text().splitlines())}
    assert at["a-end"] <= at["b-start"] and at["a-end"] <= at["c-start"]
    assert at["b-start"] < at["c-end"] and at["c-start"] < at["b-end"], "equal orders overlap"
    assert at["d-start"] >= max(at["b-end"], at["c-end"])


def test_failing_task_runs_exactly_max_attempts_times(client: Client, shared_etcd, start_nodes, tmp_path: Path):
    runs = tmp_path / "runs.txt"
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "flaky", "layers": [
        {"tasks": [shell(f"echo $CONDUCTOR_ATTEMPT >> {runs}; exit 3", max_attempts=4)]},
        {"tasks": [shell(f"echo never >> {runs}")]}]})
    final = client.wait(job, timeout=60)
    assert final["state"] == "ERRORED"
    assert runs.read_text().split() == ["1", "2", "3", "4"]
    task = client.task(f"{job}.0.0")
    assert task["state"] == "ERRORED" and task["attempts"] == 4 and task["exit_code"] == 3
    assert "no attempt left (4 of 4)" in task["records"][-1]["reason"]
    layer = client.show(f"{job}.1")
    assert layer["state"] == "PENDING", "the layer after an errored one never starts"


def test_empty_layer_completes_at_once(client: Client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "gaps", "layers": [
        {"name": "empty-first", "tasks": []}, {"name": "work", "tasks": [{"cmd": ["true"]}]},
        {"name": "empty-last"}]})
    assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    tree = client.show(job)
    assert [layer["state"] for layer in tree["layer_list"]] == ["COMPLETED"] * 3
    only_empty = client.post({"name": "nothing", "layers": [{"tasks": []}]})
    assert client.job(only_empty)["state"] == "COMPLETED"


def test_env_ids_result_and_log(client: Client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "env", "env": {"A": "job", "B": "job"}, "layers": [
        {"env": {"B": "layer", "C": "layer"}, "tasks": [
            {"env": {"C": "task"}, "cmd": ["sh", "-c",
             'echo "$A $B $C $CONDUCTOR_JOB_ID $CONDUCTOR_LAYER_ID $CONDUCTOR_TASK_ID $CONDUCTOR_ATTEMPT" '
             '| tee $CONDUCTOR_RESULT; echo oops >&2']}]}]})
    assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    task = client.task(f"{job}.0.0")
    assert task["result"] == f"job layer task {job} {job}.0 {job}.0.0 1\n"
    assert "oops" in task["log"]["tail"] and task["result"].strip() in task["log"]["tail"]
    assert task["usage"]["cpu"] >= 0 and task["node"] == "n0" and task["exit_code"] == 0
    assert task["ended"] >= task["started"]
    assert [r["state"] for r in task["records"]] == ["QUEUED", "RUNNING", "COMPLETED"]


def test_kill9_mid_task_fails_over_with_the_attempt_recorded(client: Client, shared_etcd, start_nodes, tmp_path: Path):
    marks = tmp_path / "marks.txt"
    first = start_nodes(shared_etcd.endpoint, 1, ttl=2)[0]
    job = client.post({"name": "failover", "layers": [{"tasks": [
        shell(f'echo "start $CONDUCTOR_NODE $CONDUCTOR_ATTEMPT" >> {marks}; sleep 3; '
              f'echo "end $CONDUCTOR_NODE" >> {marks}')]}]})
    wait_for(lambda: marks.exists() and "start n0" in marks.read_text(), 20, what="task started on n0")
    start_nodes(shared_etcd.endpoint, 1, ttl=2)
    killed_at = time.monotonic()
    first.kill9()
    wait_for(lambda: "start n1 2" in marks.read_text(), 2 + 2 + 1, 0.02, "task restarted on n1 within TTL + 2 s")
    restarted_after = time.monotonic() - killed_at
    assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    assert restarted_after < 2 + 2
    lines = marks.read_text().splitlines()
    assert lines == ["start n0 1", "start n1 2", "end n1"], "the killed run died with its node; one outcome"
    task = client.task(f"{job}.0.0")
    assert task["attempts"] == 2 and task["node"] == "n1"
    reasons = [r["reason"] for r in task["records"]]
    assert any("node n0 was lost" in r for r in reasons)
    assert [r["state"] for r in task["records"]].count("COMPLETED") == 1


def test_sigterm_hands_tasks_back_at_once_without_counting_a_failure(client: Client, shared_etcd, start_nodes, tmp_path: Path):
    marks = tmp_path / "marks.txt"
    leaving = start_nodes(shared_etcd.endpoint, 1, ttl=10)[0]
    job = client.post({"name": "handback", "layers": [{"tasks": [
        shell(f'echo "start $CONDUCTOR_NODE $CONDUCTOR_ATTEMPT" >> {marks}; sleep 4; echo "end $CONDUCTOR_NODE" >> {marks}')
        for _ in range(2)]}]})
    wait_for(lambda: marks.exists() and marks.read_text().count("start n0") == 2, 20, what="both started on n0")
    stayer = start_nodes(shared_etcd.endpoint, 1, ttl=10)[0]
    t0 = time.monotonic()
    assert leaving.terminate(timeout=15) == 0
    assert time.monotonic() - t0 < 8, "hand-back does not wait for the tasks (ttl is 10 s)"
    assert [n["name"] for n in client.nodes()] == [stayer.name], "the node key is gone at once"
    assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    lines = marks.read_text().splitlines()
    assert sorted(lines) == sorted(["start n0 1", "start n0 1", "start n1 2", "start n1 2", "end n1", "end n1"])
    for i in range(2):
        task = client.task(f"{job}.0.{i}")
        assert (task["attempts"], task["failures"], task["disruptions"]) == (2, 0, 1), \
            "a hand-back is a run (attempts) and a disruption, not a failure"
        assert any("handed back by n0" in r["reason"] for r in task["records"])
    assert "handing running tasks back" in leaving.log()


def test_second_sigterm_stops_at_once(client: Client, shared_etcd, start_nodes, tmp_path: Path):
    node = start_nodes(shared_etcd.endpoint, 1, ttl=10, extra=["--drain"])[0]
    job = client.post({"name": "drain", "layers": [{"tasks": [shell("sleep 30")]}]})
    wait_for(lambda: client.task(f"{job}.0.0")["state"] == "RUNNING", 20)
    node.signal(signal.SIGTERM)
    time.sleep(1.0)
    assert node.alive(), "--drain waits for the running task"
    node.signal(signal.SIGTERM)
    assert node.proc.wait(10) != 0
    wait_for(lambda: client.nodes() == [], 5, what="its lease was revoked on the way out")


def test_stalled_node_does_not_commit_after_losing_its_claim(client: Client, shared_etcd, start_nodes, tmp_path: Path):
    marks = tmp_path / "marks.txt"
    stalled = start_nodes(shared_etcd.endpoint, 1, ttl=2)[0]
    job = client.post({"name": "stall", "layers": [{"tasks": [
        shell(f'echo "start $CONDUCTOR_NODE" >> {marks}; sleep 6; echo "end $CONDUCTOR_NODE" >> {marks}; exit 7',
              max_attempts=5)]}]})
    wait_for(lambda: marks.exists() and "start n0" in marks.read_text(), 20, what="started on n0")
    other = start_nodes(shared_etcd.endpoint, 1, ttl=2)[0]
    stalled.signal(signal.SIGSTOP)
    wait_for(lambda: "start n1" in marks.read_text(), 10, what="taken over by n1")
    time.sleep(1.5)
    stalled.signal(signal.SIGCONT)
    # n1's run ends with exit 7 and is retried; the stalled node's run was killed by its watchdog.
    wait_for(lambda: "end n1" in marks.read_text(), 20, what="n1 finished its run")
    time.sleep(2.0)
    text = marks.read_text()
    assert "end n0" not in text, "the watchdog killed the stalled node's task before its lease expired"
    task = client.task(f"{job}.0.0")
    by_n0 = [r for r in task["records"] if r["node"] == "n0" and r["state"] != "RUNNING"]
    assert by_n0 == [], f"the stalled node committed after losing its claim: {by_n0}"
    assert "claim lost" in stalled.log() or "self-fencing" in stalled.log() or "no longer holds" in stalled.log()
    assert other.alive() and stalled.alive(), "the stalled node carries on with a new lease"
    wait_for(lambda: "rejoined with a new lease" in stalled.log(), 10)


def test_a_claim_whose_reply_was_lost_is_handed_back(client: Client, shared_etcd, start_nodes, tmp_path: Path):
    """A claim committed on a node's lease that the node never started (its reply was lost when
    etcd failed over) is found by the node's sweep and handed back, then runs normally."""
    from conductor import codec
    from conductor.claims import Claims, Ready

    node = start_nodes(shared_etcd.endpoint, 1, slots=1)[0]
    blocker = client.post({"name": "blocker", "layers": [{"tasks": [shell("sleep 3")]}]})
    wait_for(lambda: client.counts(blocker)["running"] == 1, 20, what="the node's only slot is busy")
    job = client.post({"name": "stray", "layers": [{"tasks": [shell(f"echo ran >> {tmp_path / 'ran.txt'}")]}]})
    info = codec.unpack(client.store.get(client.keys.node(node.name)).value)
    lease = int(info["lease"], 16)
    task, kv = client.board.load_task(client.user, f"{job}.0.0")  # no key yet: what its chunk gives
    # a claim on the node's lease that the node never made: what a lost reply leaves behind
    [held], _ = Claims(client.store, client.keys, node.name).claim([Ready(task, kv.mod_revision)], lease)
    wait_for(lambda: "never started" in node.log(), 10, what="the node handed the stray claim back")
    assert client.wait(job, timeout=20)["state"] == "COMPLETED"
    assert (tmp_path / "ran.txt").read_text() == "ran\n"
    task = client.task(f"{job}.0.0")
    assert task["attempts"] == 2 and task["disruptions"] == 1 and task["failures"] == 0
    assert any("never started" in r["reason"] for r in task["records"])
