"""Caching and compensation with real conductors and a real etcd: a cache hit completes without
running, a TTL that passed runs again, --no-cache bypasses; compensation layers run latest first
after a failure and after a kill, each task seeing the failed task and why."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conductor import codec, spec, states, taskcache
from conductor.client import Client
from conductor.errors import InvalidSpec
from harness import conductor_cli, namespace_writes, wait_for

ROOT = Path(__file__).resolve().parent.parent


def example(name: str, **env: str) -> dict:
    """An example of docs/flow/ with some of its env pointed at this test's files."""
    data = spec.load_file(str(ROOT / "examples" / "flow" / name))
    return {**data, "env": {**data.get("env", {}), **env}}


def cli(client: Client, etcd, *args: str):
    run = conductor_cli(*args, "--etcd", etcd.endpoint, "--namespace", client.keys.namespace,
                        "--user", client.user)
    assert run.returncode == 0, run.stderr
    return run


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# ---- caching ------------------------------------------------------------------------------------

def test_a_cache_hit_completes_from_the_first_run_without_running(client, shared_etcd, start_nodes, tmp_path):
    marks = tmp_path / "marks"
    start_nodes(shared_etcd.endpoint, 2)
    first = client.post(example("cache.yaml", MARKS=str(marks)))
    assert client.wait(first, timeout=30)["state"] == "COMPLETED"
    assert lines(marks) == ["ran for 4f2a9c1"]
    source = client.task(f"{first}.0.0")
    entry = client.store.get(client.keys.memo(client.user, "build-4f2a9c1"))
    assert entry is not None and codec.unpack(entry.value)["task"] == f"{first}.0.0"

    second = client.post(example("cache.yaml", MARKS=str(marks)))
    assert client.wait(second, timeout=30)["state"] == "COMPLETED"
    assert lines(marks) == ["ran for 4f2a9c1"], "the hit never ran the command"
    hit = client.task(f"{second}.0.0")
    assert hit["state"] == "COMPLETED"
    assert hit["records"][-1]["reason"].startswith(f"cached: result of {first}.0.0 completed at ")
    assert client.result(f"{second}.0.0") == client.result(f"{first}.0.0") == b"artifact-4f2a9c1.tar\n"
    after = codec.unpack(client.store.get(client.keys.memo(client.user, "build-4f2a9c1")).value)
    assert after["task"] == f"{first}.0.0" and after["ended"] == source["ended"], "a hit does not renew the entry"

    other = client.post(example("cache.yaml", MARKS=str(marks), COMMIT="77aa"))  # another key: it runs
    assert client.wait(other, timeout=30)["state"] == "COMPLETED"
    assert lines(marks) == ["ran for 4f2a9c1", "ran for 77aa"]


def test_a_passed_ttl_runs_again_and_no_cache_bypasses(client, shared_etcd, start_nodes, tmp_path):
    marks = tmp_path / "marks"
    start_nodes(shared_etcd.endpoint, 1)
    job = example("cache.yaml", MARKS=str(marks))
    ttl = 8  # long enough that the steps after the first expiry all fall inside the fresh entry's life
    job["layers"][0]["cache"] = {"key": "build-{COMMIT}", "ttl": f"{ttl}s"}
    first = client.post(job)
    assert client.wait(first, timeout=30)["state"] == "COMPLETED"
    ended = client.task(f"{first}.0.0")["ended"]

    wait_for(lambda: time.time() > ended + ttl + 0.2, ttl + 10, what="the ttl passed")
    again = client.post(job)
    assert client.wait(again, timeout=30)["state"] == "COMPLETED"
    assert len(lines(marks)) == 2, "an expired entry does not count"

    hit = client.post(job)  # the fresh entry of the run above counts
    assert client.wait(hit, timeout=30)["state"] == "COMPLETED"
    assert len(lines(marks)) == 2

    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    posted = cli(client, shared_etcd, "post", "--no-cache", str(path)).stdout.strip()
    assert client.wait(posted, timeout=30)["state"] == "COMPLETED"
    assert len(lines(marks)) == 3, "post --no-cache runs it"

    cli(client, shared_etcd, "retry", f"{hit}.0.0")
    assert client.wait(hit, timeout=30)["state"] == "COMPLETED"
    assert len(lines(marks)) == 3, "a retry takes the cached result"
    assert client.task(f"{hit}.0.0")["reason"].startswith("cached: ")
    cli(client, shared_etcd, "retry", "--no-cache", f"{hit}.0.0")
    wait_for(lambda: len(lines(marks)) == 4, 30, what="retry --no-cache ran it")
    assert client.wait(hit, timeout=30)["state"] == "COMPLETED"


def test_the_sweeper_removes_expired_entries_only(client, shared_etcd):
    k, store = client.keys, client.store
    now = time.time()
    store.put(k.memo(client.user, "old"), codec.pack({"task": "t", "ended": now - 100, "ttl": 10, "expires": now - 90}))
    store.put(k.memo(client.user, "new"), codec.pack({"task": "t", "ended": now, "ttl": 10, "expires": now + 10}))
    assert taskcache.sweep(store, k, now) == 1
    assert store.get(k.memo(client.user, "old")) is None and store.get(k.memo(client.user, "new")) is not None


def test_a_bad_cache_or_compensation_writes_nothing(client, shared_etcd):
    before = namespace_writes(client.store, client.keys.namespace)
    for bad in ({"name": "j", "layers": [{"cache": {"key": "k-{NOPE}", "ttl": "1h"}, "tasks": [{"cmd": ["true"]}]}]},
                {"name": "j", "layers": [{"name": "a", "tasks": []}], "compensate": [{"for": "b", "tasks": []}]}):
        with pytest.raises(InvalidSpec):
            client.post(bad)
    assert namespace_writes(client.store, client.keys.namespace) == before, "nothing was written"


# ---- compensation -------------------------------------------------------------------------------

def wait_compensated(client: Client, job: str) -> dict:
    wait_for(lambda: client.job(job)["compensation"]["state"] in states.FINAL, 40, what="compensation ended")
    return client.job(job)


def test_compensation_runs_latest_first_after_a_failure(client, shared_etcd, start_nodes, tmp_path):
    log = tmp_path / "log"
    start_nodes(shared_etcd.endpoint, 2)
    job = client.post(example("compensate.yaml", LOG=str(log)))
    assert client.wait(job, timeout=30)["state"] == "ERRORED"
    done = wait_compensated(client, job)
    assert done["state"] == "ERRORED", "the job stays ERRORED"
    assert done["compensation"]["state"] == "COMPLETED"
    failed = f"{job}.2.0"
    assert lines(log) == ["provision", "configure", "deploy", "undo configure: app failed (exit 3)",
                          "undo provision", f"notify: {failed}"]
    comp = [client.show(f"{job}.{i}") for i in (3, 4, 5)]
    assert [c["state"] for c in comp] == ["COMPLETED"] * 3
    started = [client.task(f"{job}.{i}.0")["started"] for i in (3, 4, 5)]
    ended = [client.task(f"{job}.{i}.0")["ended"] for i in (3, 4, 5)]
    assert started[1] >= ended[0] and started[2] >= ended[1], "one at a time, in order"
    reasons = [r["reason"] for r in done["records"]]
    assert "compensation RUNNING: the job failed" in reasons
    assert reasons[-1] == "compensation COMPLETED: every compensation layer is done"
    assert client.store.get(client.keys.active(client.user, job)) is None
    shown = cli(client, shared_etcd, "show", job).stdout
    assert "compensation COMPLETED" in shown and "compensates configure" in shown


def test_compensation_runs_after_a_kill_and_skips_layers_that_never_completed(client, shared_etcd, start_nodes,
                                                                              tmp_path):
    log, flag = tmp_path / "log", tmp_path / "running"
    start_nodes(shared_etcd.endpoint, 1)
    data = example("compensate.yaml", LOG=str(log))
    data["layers"][1]["tasks"][0]["cmd"] = f'touch {flag}; sleep 60'
    job = client.post(data)
    wait_for(flag.exists, 30, what="configure runs")
    cli(client, shared_etcd, "kill", job, "--grace", "1")
    done = wait_compensated(client, job)
    assert done["state"] == "ERRORED" and done["compensation"]["state"] == "COMPLETED"
    assert lines(log) == ["provision", "undo provision", f"notify: {job}.1.0"]
    assert client.show(f"{job}.3")["state"] == "SKIPPED", "configure never completed: nothing to undo"
    assert client.task(f"{job}.2.0")["attempts"] == 0, "deploy never ran"


def test_compensation_tasks_see_the_kill_as_the_reason(client, shared_etcd, start_nodes, tmp_path):
    out, flag = tmp_path / "env", tmp_path / "running"
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "k", "layers": [
        {"name": "a", "tasks": [{"cmd": ["true"]}]},
        {"name": "b", "order": 1, "tasks": [{"name": "long", "cmd": ["sh", "-c", f"touch {flag}; sleep 60"]}]}],
        "compensate": [{"for": "a", "tasks": [{"shell": True, "cmd": (
            f'echo "$CONDUCTOR_FAILED_TASK|$CONDUCTOR_FAILED_TASK_NAME|$CONDUCTOR_FAILED_LAYER|'
            f'$CONDUCTOR_FAILED_REASON|$CONDUCTOR_COMPENSATES" > {out}')}]}]})
    wait_for(flag.exists, 30, what="b runs")
    client.kill(job, grace=1)
    assert wait_compensated(client, job)["compensation"]["state"] == "COMPLETED"
    assert out.read_text().strip() == f"{job}.1.0|long|b|killed by {client.user}|a"


def test_a_completed_job_skips_its_compensation(client, shared_etcd, start_nodes, tmp_path):
    log = tmp_path / "log"
    start_nodes(shared_etcd.endpoint, 1)
    data = example("compensate.yaml", LOG=str(log))
    data["layers"][2]["tasks"][0]["cmd"] = 'echo deploy >> "$LOG"'
    job = client.post(data)
    assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    done = client.job(job)
    assert done["compensation"]["state"] == "SKIPPED"
    assert [c["state"] for c in done["compensation"]["layers"]] == ["SKIPPED"] * 3
    assert lines(log) == ["provision", "configure", "deploy"]
