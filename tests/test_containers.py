"""Container tasks through a real Docker API (podman's service), on real conductors."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conductor.client import Client
from containers import IMAGE, start_podman
from harness import wait_for


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    host, service, env = start_podman(tmp_path_factory.mktemp("podman"))
    yield host, env
    service.terminate()
    service.wait(20)


def containers_named(env: dict[str, str], task_id: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "-a", "--filter", f"label=conductor.task={task_id}", "--format", "{{.ID}}"],
                         capture_output=True, text=True, env=env)
    return out.stdout.split()


def test_container_task_runs_with_env_result_and_log(client: Client, shared_etcd, start_nodes, docker_host):
    host, env = docker_host
    start_nodes(shared_etcd.endpoint, 1, extra=["--docker-host", host])
    job = client.post({"name": "boxed", "env": {"WHO": "job"}, "layers": [{"tasks": [
        {"image": IMAGE, "env": {"WHAT": "task"},
         "cmd": ["sh", "-c", 'echo "$WHO $WHAT $CONDUCTOR_TASK_ID" | tee $CONDUCTOR_RESULT; echo to-stderr >&2']},
        {"image": IMAGE, "cmd": ["sh", "-c", "exit 3"], "max_attempts": 2}]}]})
    final = client.wait(job, timeout=120)
    assert final["state"] == "ERRORED"
    ok = client.task(f"{job}.0.0")
    assert ok["state"] == "COMPLETED" and ok["result"] == f"job task {job}.0.0\n"
    assert "to-stderr" in ok["log"]["tail"]
    failed = client.task(f"{job}.0.1")
    assert failed["state"] == "ERRORED" and failed["exit_code"] == 3 and failed["attempts"] == 2
    assert containers_named(env, f"{job}.0.0") == [], "finished containers are removed"


def test_container_timeout_kills_the_container(client: Client, shared_etcd, start_nodes, docker_host):
    host, env = docker_host
    start_nodes(shared_etcd.endpoint, 1, extra=["--docker-host", host])
    job = client.post({"name": "slow", "layers": [{"tasks": [
        {"image": IMAGE, "cmd": ["sleep", "60"], "timeout": 2, "max_attempts": 1}]}]})
    started = time.monotonic()
    final = client.wait(job, timeout=60)
    assert final["state"] == "ERRORED" and time.monotonic() - started < 30
    task = client.task(f"{job}.0.0")
    assert task["reason"].startswith("timed out after 2s")
    assert containers_named(env, f"{job}.0.0") == []


def test_only_nodes_with_a_docker_api_take_container_tasks(client: Client, shared_etcd, start_nodes, docker_host,
                                                           tmp_path: Path):
    host, _ = docker_host
    plain = start_nodes(shared_etcd.endpoint, 1, extra=["--docker-host", f"unix://{tmp_path}/none.sock"])[0]
    job = client.post({"name": "needs-box", "layers": [{"tasks": [{"image": IMAGE, "cmd": ["true"]}]}]})
    time.sleep(1.5)
    assert client.task(f"{job}.0.0")["state"] == "QUEUED", "a node without containers leaves it"
    boxed = start_nodes(shared_etcd.endpoint, 1, extra=["--docker-host", host])[0]
    assert client.wait(job, timeout=60)["state"] == "COMPLETED"
    assert client.task(f"{job}.0.0")["node"] == boxed.name
    assert "containers none" in plain.log()


def test_a_dead_conductors_container_is_killed_by_its_watchdog(client: Client, shared_etcd, start_nodes,
                                                                docker_host):
    host, env = docker_host
    node = start_nodes(shared_etcd.endpoint, 1, ttl=2, extra=["--docker-host", host])[0]
    job = client.post({"name": "orphan-box", "layers": [{"tasks": [
        {"image": IMAGE, "cmd": ["sleep", "300"], "max_attempts": 1}]}]})
    wait_for(lambda: containers_named(env, f"{job}.0.0"), 60, 0.2, "container started")
    node.kill9()
    wait_for(lambda: not _running(env, f"{job}.0.0"), 20, 0.2, "the watchdog killed the container")


def _running(env: dict[str, str], task_id: str) -> list[str]:
    out = subprocess.run(["podman", "ps", "--filter", f"label=conductor.task={task_id}", "--format", "{{.ID}}"],
                         capture_output=True, text=True, env=env)
    return out.stdout.split()
