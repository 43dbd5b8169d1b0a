"""Retries with backoff, retry_on / fail_on, start_within, job deadlines and min_success, with real
conductors and a real etcd; the job files are the examples of docs/flow/ (examples/flow/)."""
from __future__ import annotations

import time
from pathlib import Path

from conductor import spec
from conductor.client import Client
from harness import conductor_cli, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "flow"
SLOW_SWEEP = ["--sweep", "60"]  # so that what ends a deadline on time is a node's timer, not the sweep


def example(name: str) -> dict:
    return spec.load_file(str(EXAMPLES / name))


def records(client: Client, task_id: str) -> list[dict]:
    return client.task(task_id)["records"]


def retry_gaps(recs: list[dict]) -> list[float]:
    """Seconds from each retry's requeue to the next claim, from the task's records."""
    gaps, queued_at = [], None
    for r in recs:
        if r["state"] == "QUEUED" and r["reason"].startswith("retry:"):
            queued_at = r["at"]
        elif r["state"] == "RUNNING" and queued_at is not None:
            gaps.append(r["at"] - queued_at)
            queued_at = None
    return gaps


def test_backoff_delays_grow_as_configured(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 2)
    job = client.post(example("retries.yaml"))
    assert client.wait(job, timeout=60)["state"] == "COMPLETED"
    task = client.task(f"{job}.0.0")
    assert task["attempts"] == 3
    gaps = retry_gaps(task["records"])
    assert len(gaps) == 2, task["records"]
    for gap, delay in zip(gaps, (1.0, 2.0)):  # delay 1s, backoff 2
        assert delay - 0.05 <= gap <= delay + 1.5, (gaps, task["records"])
    assert any("due in 2s" in r["reason"] for r in task["records"]), "the record says when the next try is due"
    shown = conductor_cli("show", f"{job}.0.0", "--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace)
    assert shown.returncode == 0 and "delay 1s x2 up to 10s; fail_on [3]" in shown.stdout, shown.stdout + shown.stderr


def test_a_waiting_retry_holds_no_slot_and_show_says_when_it_is_due(client, shared_etcd, start_nodes, tmp_path):
    done = tmp_path / "done"
    start_nodes(shared_etcd.endpoint, 1, slots=1)
    job = client.post({"name": "wait", "layers": [{"tasks": [
        {"name": "flaky", "cmd": ["sh", "-c", "exit 1"], "retry": {"delay": "30s"}, "max_attempts": 2},
        {"name": "other", "cmd": ["sh", "-c", f"sleep 1; touch {done}"]}]}]})
    wait_for(lambda: client.task(f"{job}.0.0").get("not_before"), 20, what="the first run failed")
    task = client.task(f"{job}.0.0")
    assert task["state"] == "QUEUED"
    assert "next try due at" in (task.get("waiting") or ""), task.get("waiting")
    wait_for(done.exists, 20, what="the other task ran on the only slot meanwhile")
    assert client.task(f"{job}.0.0")["attempts"] == 1, "not tried again before its delay"
    client.kill(job, grace=1)
    assert client.wait(job, timeout=20)["state"] == "ERRORED"


def test_fail_on_stops_retries(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "f", "layers": [{"tasks": [
        {"cmd": ["sh", "-c", "exit 3"], "fail_on": [3], "max_attempts": 5, "retry": {"delay": "0.2s"}}]}]})
    assert client.wait(job, timeout=30)["state"] == "ERRORED"
    task = client.task(f"{job}.0.0")
    assert task["attempts"] == 1
    assert "exit code 3 is in fail_on" in task["reason"], task["reason"]


def test_retry_on_retries_only_those_codes(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    # exits 75 (listed: retried), then 1 (not listed: ends the task)
    job = client.post({"name": "r", "layers": [{"tasks": [
        {"cmd": ["sh", "-c", '[ "$CONDUCTOR_ATTEMPT" = 1 ] && exit 75; exit 1'], "retry_on": [75],
         "max_attempts": 5, "retry": {"delay": "0.2s"}}]}]})
    assert client.wait(job, timeout=30)["state"] == "ERRORED"
    task = client.task(f"{job}.0.0")
    assert task["attempts"] == 2, task["records"]
    assert "exit code 1 is not in retry_on" in task["reason"], task["reason"]


def test_start_within_errors_a_task_not_started_in_time(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 2, extra=SLOW_SWEEP)
    posted = time.time()
    job = client.post(example("start-within.yaml"))
    assert client.wait(job, timeout=30)["state"] == "ERRORED"
    task = client.task(f"{job}.0.0")
    assert task["reason"] == "not started within 2s (start_within)"
    assert task["attempts"] == 0
    assert task["ended"] - posted < 2 + 2.5, "ended by a node's timer, not by the next sweep"


def test_job_deadline_kills_what_runs_and_what_waits(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 2, extra=SLOW_SWEEP)
    posted = time.time()
    job = client.post(example("deadline.yaml"))
    wait_for(lambda: client.task(f"{job}.0.0")["state"] == "RUNNING", 20, what="the slow task runs")
    final = client.wait(job, timeout=30)
    assert final["state"] == "ERRORED"
    assert final["records"][-1]["reason"] == "deadline passed", final["records"]
    assert final["ended"] - posted < 3 + 3, "killed on time by a node's timer"
    shown = conductor_cli("show", job, "--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace)
    assert shown.returncode == 0 and "(passed: killed)" in shown.stdout, shown.stdout + shown.stderr
    slow, send = client.task(f"{job}.0.0"), client.task(f"{job}.1.0")
    assert slow["state"] == "ERRORED" and "killed by deadline" in slow["reason"], slow["reason"]
    assert send["state"] == "ERRORED" and send["attempts"] == 0, "the waiting layer never ran"


def test_min_success_completes_a_layer_below_the_share_and_errors_one_above(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 2, slots=4)
    ok = client.post(example("partial-success.yaml"))
    data = example("partial-success.yaml")
    data["layers"][0]["tasks"][1]["cmd"] = ["sh", "-c", "exit 1"]  # a second dead link: 8 of 10
    bad = client.post(data)
    done = client.wait(ok, timeout=60)
    assert done["state"] == "COMPLETED"
    fetch = client.show(f"{ok}.0")
    assert fetch["state"] == "COMPLETED"
    assert "9 of 10 tasks done, 1 errored" in fetch["records"][-1]["reason"], fetch["records"]
    assert client.task(f"{ok}.1.0")["state"] == "COMPLETED", "the next layer ran"
    assert client.wait(bad, timeout=60)["state"] == "ERRORED"
    assert client.show(f"{bad}.0")["state"] == "ERRORED"


def test_a_bad_flow_value_is_refused_by_post_naming_the_field_and_writing_nothing(client, shared_etcd, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nlayers:\n  - retry: {delay: 1s, backoff: 0}\n    tasks:\n      - cmd: [true]\n")
    run = conductor_cli("post", str(bad), "--etcd", shared_etcd.endpoint, "--namespace", client.keys.namespace)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "layers[0].retry.backoff: must be between 1 and 100, not 0" in run.stderr, run.stderr
    assert client.store.count(client.keys.namespace) == 0, "nothing written"
