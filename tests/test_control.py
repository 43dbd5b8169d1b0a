"""Steering running work from any machine: pause, kill, retry, skip, etags, adding tasks, spawn
files, env, results, logs, live views and retention. Real etcd, real conductor processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest

from conductor.client import Client
from conductor.errors import Refused, StaleEtag
from harness import conductor_cli, wait_for


def sh(script: str, **extra) -> dict:
    return {"cmd": ["sh", "-c", script], **extra}


def states_of(client: Client, job: str) -> dict[str, str]:
    tree = client.show(job)
    return {t["id"]: t["state"] for layer in tree["layer_list"] for t in layer["task_list"]}


def test_pause_a_layer_mid_run_lets_running_tasks_finish_and_starts_nothing(client, shared_etcd, start_nodes,
                                                                           tmp_path):
    marks = tmp_path / "marks"
    start_nodes(shared_etcd.endpoint, 1, slots=2)
    job = client.post({"name": "p", "layers": [{"tasks": [
        sh(f"echo start $CONDUCTOR_TASK_ID >> {marks}; sleep 1.5; echo end $CONDUCTOR_TASK_ID >> {marks}")
        for _ in range(6)]}]})
    wait_for(lambda: marks.exists() and marks.read_text().count("start") == 2, 20)
    [paused] = client.pause(f"{job}.0")
    assert paused.done == "paused"
    wait_for(lambda: marks.read_text().count("end") == 2, 10, what="the two running tasks finished")
    time.sleep(1.5)
    assert marks.read_text().count("start") == 2, "nothing new started while paused"
    assert client.show(f"{job}.0")["paused_at"]
    client.unpause(f"{job}.0")
    assert client.wait(job, timeout=40)["state"] == "COMPLETED"
    assert marks.read_text().count("end") == 6


def test_kill_a_running_task_on_another_node_kills_its_whole_tree(client, shared_etcd, start_nodes, tmp_path):
    pids = tmp_path / "pids"
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "k", "layers": [{"tasks": [
        sh(f"sleep 60 & echo $! >> {pids}; (sleep 60 & echo $! >> {pids}; wait) & echo $$ >> {pids}; wait",
           max_attempts=3)]}]})
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 3, 20, what="the tree started")
    tree = [int(p) for p in pids.read_text().split()]
    assert all(psutil.pid_exists(p) for p in tree)
    run = conductor_cli("kill", job, "--grace", "2", "--etcd", shared_etcd.endpoint, "--namespace",
                        client.keys.namespace, "--user", "tester")
    assert run.returncode == 0, run.stderr
    killed_at = time.monotonic()
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in tree), 2 + 1.5, 0.05, "every process of the task gone within the grace")
    assert time.monotonic() - killed_at < 3.5
    assert client.wait(job, timeout=20)["state"] == "ERRORED"
    task = client.task(f"{job}.0.0")
    assert task["state"] == "ERRORED" and task["reason"].startswith("killed by tester")
    assert task["attempts"] == 1, "a kill is not retried"


def test_retry_of_a_killed_task_runs_it_again(client, shared_etcd, start_nodes, tmp_path):
    flag, runs = tmp_path / "flag", tmp_path / "runs"
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "r", "layers": [{"tasks": [
        sh(f"echo run >> {runs}; while [ ! -e {flag} ]; do sleep 0.1; done", max_attempts=1)]}]})
    wait_for(lambda: runs.exists(), 20)
    client.kill(f"{job}.0.0", grace=1)
    assert client.wait(job, timeout=20)["state"] == "ERRORED"
    flag.touch()
    [done] = client.retry(f"{job}.0.0")
    assert done.done == "retried"
    assert client.wait(job, timeout=20)["state"] == "COMPLETED"
    task = client.task(f"{job}.0.0")
    assert runs.read_text().count("run") == 2 and task["attempts"] == 2
    assert [r["state"] for r in task["records"]][-4:] == ["ERRORED", "QUEUED", "RUNNING", "COMPLETED"]


def test_skip_of_an_errored_task_lets_the_job_complete(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "s", "layers": [{"tasks": [{"cmd": ["false"], "max_attempts": 1},
                                                          {"cmd": ["true"]}]},
                                               {"tasks": [{"cmd": ["true"]}]}]})
    assert client.wait(job, timeout=20)["state"] == "ERRORED"
    client.skip(f"{job}.0.0")
    assert client.wait(job, timeout=20)["state"] == "COMPLETED"
    assert states_of(client, job) == {f"{job}.0.0": "SKIPPED", f"{job}.0.1": "COMPLETED", f"{job}.1.0": "COMPLETED"}
    assert client.counts(job)["skipped"] == 1 and client.counts(job)["errored"] == 0


def test_skip_a_layer_kills_its_running_tasks_and_the_job_goes_on(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "sl", "layers": [{"tasks": [sh("sleep 60"), sh("sleep 60")]},
                                                {"tasks": [{"cmd": ["true"]}]}]})
    wait_for(lambda: client.counts(job)["running"] == 2, 20)
    client.skip(f"{job}.0", grace=1)
    assert client.wait(job, timeout=20)["state"] == "COMPLETED"
    tree = client.show(job)
    assert [layer["state"] for layer in tree["layer_list"]] == ["SKIPPED", "COMPLETED"]


def test_a_stale_etag_is_refused_and_changes_nothing(client, shared_etcd, namespace):
    job = client.post({"name": "e", "paused": True, "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    current = client.job(job)["etag"]
    client.set_env(job, {"A": "1"})  # moves the job on
    with pytest.raises(StaleEtag) as err:
        client.unpause(job, etag=current)
    assert job in str(err.value) and str(client.job(job)["etag"]) in str(err.value)
    assert client.job(job)["paused_at"], "nothing changed"
    run = conductor_cli("unpause", f"{job}@{current}", "--etcd", shared_etcd.endpoint, "--namespace", namespace,
                        "--user", "tester")
    assert run.returncode == 5 and "stale" in run.stderr and job in run.stderr
    fresh = client.job(job)["etag"]
    run = conductor_cli("unpause", job, "--etag", str(fresh), "--etcd", shared_etcd.endpoint, "--namespace",
                        namespace, "--user", "tester")
    assert run.returncode == 0, run.stderr
    assert not client.job(job)["paused_at"]


def test_add_task_before_a_layer_starts_runs_it_and_after_is_refused(client, shared_etcd, start_nodes, tmp_path):
    out = tmp_path / "out"
    job = client.post({"name": "a", "layers": [{"tasks": [sh("sleep 1")]}, {"tasks": []}]})
    added = conductor_cli("add-task", f"{job}.1", "--name", "late", "--etcd", shared_etcd.endpoint,
                          "--namespace", client.keys.namespace, "--user", "tester", "--", "sh", "-c",
                          f"echo added >> {out}")
    assert added.returncode == 0, added.stderr
    assert added.stdout.split() == [f"{job}.1.0"]
    start_nodes(shared_etcd.endpoint, 1)
    assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    assert out.read_text() == "added\n"
    with pytest.raises(Refused) as err:
        client.add_tasks(f"{job}.0", [{"cmd": ["true"]}])
    assert "COMPLETED" in str(err.value) and "before it starts" in str(err.value)
    bad = conductor_cli("add-task", f"{job}.1", "--etcd", shared_etcd.endpoint, "--namespace",
                        client.keys.namespace, "--user", "tester", "--", "true")
    assert bad.returncode == 6


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.12])
def test_spawn_file_of_500_tasks_fans_out_exactly_once_even_if_the_node_dies_as_it_completes(
        client, shared_etcd, start_nodes, tmp_path, delay):
    out = tmp_path / "out"
    spawned = [sh(f"echo $CONDUCTOR_TASK_ID >> {out}") for _ in range(500)]
    spawn_file = tmp_path / "spawn.json"
    spawn_file.write_text(json.dumps(spawned))
    done_mark = tmp_path / "done"
    first = start_nodes(shared_etcd.endpoint, 1, ttl=2)[0]
    job = client.post({"name": "fan", "layers": [
        {"tasks": [sh(f"cp {spawn_file} $CONDUCTOR_SPAWN; echo $CONDUCTOR_NODE >> {done_mark}")]},
        {"tasks": []}, {"tasks": [sh(f"echo last >> {out}")]}]})
    wait_for(lambda: done_mark.exists(), 20, 0.005, "the spawning task wrote its file and is exiting")
    time.sleep(delay)
    first.kill9()  # before, while or just after it stages and commits the 500 tasks
    start_nodes(shared_etcd.endpoint, 1, ttl=2, slots=4)
    assert client.wait(job, timeout=120)["state"] == "COMPLETED"
    lines = out.read_text().split()
    ids = [x for x in lines if x != "last"]
    layer = client.show(f"{job}.1", tasks=0)  # every task: the default is a page of 100
    assert len(layer["task_list"]) == 500 and layer["tasks"] == 500, "the batch was added exactly once"
    assert set(ids) == {t["id"] for t in layer["task_list"]} and lines[-1] == "last"
    for task_id, times in Counter(ids).items():  # a task the dying node had started runs again
        if times > 1:
            task = client.task(task_id)
            assert times == 2 and any("was lost" in r["reason"] for r in task["records"]), task_id
    assert client.job(job)["tasks"] == 502


def test_a_bad_spawn_file_fails_the_task_naming_the_field(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "badspawn", "layers": [
        {"tasks": [sh('echo \'[{"cmd": "oops"}]\' > $CONDUCTOR_SPAWN', max_attempts=1)]}, {"tasks": []}]})
    assert client.wait(job, timeout=20)["state"] == "ERRORED"
    reason = client.task(f"{job}.0.0")["reason"]
    assert "spawn file" in reason and "[0].cmd" in reason and "must be a list" in reason
    assert client.show(f"{job}.1")["task_list"] == []


def test_logs_follow_sees_lines_as_they_are_written(client, shared_etcd, start_nodes, tmp_path):
    gate = tmp_path / "gate"
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "l", "layers": [{"tasks": [
        sh(f"echo first; while [ ! -e {gate} ]; do sleep 0.1; done; echo second")]}]})
    proc = subprocess.Popen([sys.executable, "-m", "conductor", "logs", "-f", f"{job}.0.0", "--etcd",
                             shared_etcd.endpoint, "--namespace", client.keys.namespace, "--user", "tester"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen: list[str] = []

    def read() -> str:
        chunk = proc.stdout.read()
        if chunk:
            seen.append(chunk)
        return "".join(seen)

    wait_for(lambda: "first" in read(), 20, 0.1, "the first line while the task still runs")
    assert "second" not in "".join(seen) and proc.poll() is None
    gate.touch()
    wait_for(lambda: "second" in read(), 20, 0.1, "the second line")
    assert proc.wait(20) == 0
    assert read().count("first") == 1


def test_result_and_env_get_and_set_inside_a_task(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    py = sys.executable
    job = client.post({"name": "inside", "layers": [
        {"tasks": [sh(f"{py} -m conductor result set from-inside && {py} -m conductor env set "
                      f"$CONDUCTOR_JOB_ID.1.0 FROM=first")]},
        {"tasks": [sh("echo $FROM > $CONDUCTOR_RESULT")]}]})
    assert client.wait(job, timeout=40)["state"] == "COMPLETED"
    assert client.result(f"{job}.0.0") == b"from-inside"
    assert client.result(f"{job}.1.0") == b"first\n"
    assert client.env(f"{job}.1.0") == {"FROM": "first"}
    run = conductor_cli("result", "get", f"{job}.0.0", "--etcd", shared_etcd.endpoint, "--namespace",
                        client.keys.namespace, "--user", "tester")
    assert run.stdout == "from-inside"


def test_posted_paused_runs_only_after_unpause(client, shared_etcd, start_nodes, tmp_path):
    start_nodes(shared_etcd.endpoint, 1)
    path = tmp_path / "job.yaml"
    path.write_text("name: held\nlayers:\n  - tasks:\n      - cmd: [true]\n")
    run = conductor_cli("post", str(path), "--paused", "--etcd", shared_etcd.endpoint, "--namespace",
                        client.keys.namespace, "--user", "tester")
    job = run.stdout.strip()
    file_paused = client.post({"name": "fp", "layers": [{"paused": True, "tasks": [{"cmd": ["true"]}]}]})
    time.sleep(1.0)
    assert client.task(f"{job}.0.0")["state"] == "PENDING" and client.job(job)["paused_at"]
    assert client.task(f"{file_paused}.0.0")["state"] == "PENDING", "a paused layer does not start"
    client.unpause(job, f"{file_paused}.0")
    assert client.wait(job, timeout=20)["state"] == "COMPLETED"
    assert client.wait(file_paused, timeout=20)["state"] == "COMPLETED"


def test_show_watch_updates_from_watches(client, shared_etcd, start_nodes, tmp_path):
    gate = tmp_path / "gate"
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "w", "layers": [{"tasks": [sh(f"while [ ! -e {gate} ]; do sleep 0.1; done")]}]})
    proc = subprocess.Popen([sys.executable, "-m", "conductor", "show", job, "--watch", "--json", "--etcd",
                             shared_etcd.endpoint, "--namespace", client.keys.namespace, "--user", "tester"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["id"] == job
        gate.touch()
        state = first["state"]
        deadline = time.monotonic() + 20
        while state != "COMPLETED" and time.monotonic() < deadline:
            state = json.loads(proc.stdout.readline())["state"]
        assert state == "COMPLETED"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_gc_removes_only_what_is_finished_and_old(client, shared_etcd, start_nodes):
    start_nodes(shared_etcd.endpoint, 1)
    old = client.post({"name": "old", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    assert client.wait(old, timeout=20)["state"] == "COMPLETED"
    running = client.post({"name": "running", "layers": [{"tasks": [sh("sleep 30")]}]})
    held = client.post({"name": "held", "paused": True, "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    time.sleep(1.2)
    assert client.gc(keep=3600) == []
    assert client.gc(keep=1, dry_run=True) == [old]
    assert client.gc(keep=1) == [old]
    assert [j["id"] for j in client.jobs()] == [held, running]
    assert client.store.count(client.keys.task("tester", f"{old}.")) == 0
    assert client.store.count(client.keys.job(client.user, old)) == 0
    client.kill(running, grace=0.5)


def test_fixes_found_in_review(client, shared_etcd, start_nodes, tmp_path):
    """Several spawning tasks finishing together; add-task with a current etag; killing a
    continue-policy layer; attempt numbers after a retry."""
    start_nodes(shared_etcd.endpoint, 1, slots=4)
    spawner = sh('echo \'[{"cmd": ["true"]}, {"cmd": ["true"]}]\' > $CONDUCTOR_SPAWN')
    job = client.post({"name": "multi-spawn", "layers": [{"tasks": [spawner] * 4}, {"tasks": []}]})
    assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    assert len(client.show(f"{job}.1")["task_list"]) == 8 and client.job(job)["tasks"] == 12

    pending = client.post({"name": "later", "paused": True, "layers": [{"tasks": []}, {"tasks": []}]})
    etag = client.show(f"{pending}.1")["etag"]
    assert client.add_tasks(f"{pending}.1", [{"cmd": ["true"]}], etag=etag) == [f"{pending}.1.0"]
    with pytest.raises(StaleEtag):
        client.add_tasks(f"{pending}.1", [{"cmd": ["true"]}], etag=etag)

    lenient = client.post({"name": "lenient", "layers": [{"on_error": "continue", "tasks": [sh("sleep 30")]},
                                                         {"tasks": [{"cmd": ["true"]}]}]})
    wait_for(lambda: client.counts(lenient)["running"] == 1, 20)
    client.kill(f"{lenient}.0", grace=0.5)
    assert client.wait(lenient, timeout=20)["state"] == "ERRORED", "a killed layer stops the job, whatever its policy"
    assert client.show(f"{lenient}.1")["state"] == "PENDING"

    flaky = client.post({"name": "again", "layers": [{"tasks": [{"cmd": ["false"], "max_attempts": 2}]}]})
    client.wait(flaky, timeout=20)
    client.retry(f"{flaky}.0.0")
    client.wait(flaky, timeout=20)
    reasons = [r["reason"] for r in client.task(f"{flaky}.0.0")["records"]]
    assert "claimed by n0 (attempt 2 of 2)" in reasons[-2] and "of 2" in reasons[-1] and "4 of 2" not in " ".join(reasons)


def test_actions_at_every_level(client, shared_etcd, start_nodes, tmp_path):
    """pause/unpause a task; retry a layer and a whole job; skip a whole job."""
    start_nodes(shared_etcd.endpoint, 1, slots=2)
    held = client.post({"name": "task-pause", "layers": [{"tasks": [{"cmd": ["true"]}, {"cmd": ["true"], "paused": True}]}]})
    wait_for(lambda: client.task(f"{held}.0.0")["state"] == "COMPLETED", 20)
    time.sleep(0.5)
    assert client.task(f"{held}.0.1")["state"] == "QUEUED", "a paused task is not claimed"
    client.unpause(f"{held}.0.1")
    assert client.wait(held, timeout=20)["state"] == "COMPLETED"
    client.pause(f"{held}.0.1")
    assert client.task(f"{held}.0.1")["paused_at"], "pausing a finished task is recorded, nothing else changes"

    flag = tmp_path / "ok"
    flaky = sh(f"test -e {flag}", max_attempts=1)
    job = client.post({"name": "retry-levels", "layers": [{"tasks": [flaky, flaky]}, {"tasks": [flaky]}]})
    assert client.wait(job, timeout=20)["state"] == "ERRORED"
    flag.touch()
    [layer_retry] = client.retry(f"{job}.0")
    assert layer_retry.done == "retried 2 errored task(s)"
    assert client.wait(job, timeout=20)["state"] == "COMPLETED"
    flag.unlink()
    again = client.post({"name": "retry-job", "layers": [{"tasks": [flaky]}]})
    assert client.wait(again, timeout=20)["state"] == "ERRORED"
    flag.touch()
    client.retry(again)
    assert client.wait(again, timeout=20)["state"] == "COMPLETED"

    skipped = client.post({"name": "skip-job", "layers": [{"tasks": [sh("sleep 60")]}, {"tasks": [{"cmd": ["true"]}]}]})
    wait_for(lambda: client.counts(skipped)["running"] == 1, 20)
    client.skip(skipped, grace=0.5)
    assert client.wait(skipped, timeout=20)["state"] == "COMPLETED"
    assert [layer["state"] for layer in client.show(skipped)["layer_list"]] == ["SKIPPED", "SKIPPED"]
