"""A network partition, not a dead process: a conductor whose link to etcd goes down while it runs
a task kills the task before its lease can expire, the task runs once elsewhere, and when the link
comes back the conductor carries on by itself. Machines are network namespaces (tests/netns.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from harness import ETCD, wait_for
from netns import Lab, require_root

TTL = 3


def start_etcd(lab: Lab, base: Path) -> str:
    host = lab.address(0)
    client, peer = f"http://{host}:2379", f"http://{host}:2380"
    lab.spawn(0, [ETCD, "--name", "e0", "--data-dir", str(base / "etcd"), "--listen-client-urls", client,
                  "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                  "--initial-cluster", f"e0={peer}"], base / "etcd.log")
    return f"{host}:2379"


def conductor(lab: Lab, i: int, name: str, endpoint: str, base: Path, labels: str) -> Path:
    log = base / f"{name}.log"
    lab.conductor(i, ["run", "--etcd", endpoint, "--name", name, "--ttl", str(TTL), "--slots", "1",
                      "--sweep", "1", "--data-dir", str(base / name), "--labels", labels], log)
    wait_for(lambda: "ready:" in log.read_text(), 30, 0.1, f"{name} ready")
    return log


def post(lab: Lab, i: int, endpoint: str, job: dict, base: Path) -> str:
    path = base / f"job-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(job))
    done = lab.cli(i, "post", str(path), "--etcd", endpoint, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["id"]


def show(lab: Lab, i: int, endpoint: str, some_id: str) -> dict:
    done = lab.cli(i, "show", some_id, "--etcd", endpoint, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.timeout(600)
def test_a_partitioned_conductor_kills_its_task_in_time_and_rejoins_when_the_link_heals(tmp_path: Path):
    require_root()
    marks = tmp_path / "marks.txt"
    with Lab(3) as lab:
        endpoint = start_etcd(lab, tmp_path)
        wait_for(lambda: lab.cli(1, "nodes", "--etcd", endpoint).returncode == 0, 30, 0.2, "etcd answers")
        log_a = conductor(lab, 1, "a", endpoint, tmp_path, "machine=a")
        script = f'echo "start $CONDUCTOR_NODE $$" >> {marks}; sleep 8; echo "end $CONDUCTOR_NODE" >> {marks}'
        job = post(lab, 1, endpoint, {"name": "cut", "layers": [{"tasks": [{"cmd": ["sh", "-c", script]}]}]}, tmp_path)
        started = wait_for(lambda: [m for m in lines(marks) if m.startswith("start a ")], 30, 0.05, "task started on a")
        task_pid = int(started[0].split()[2])  # type: ignore[index]
        conductor(lab, 2, "b", endpoint, tmp_path, "machine=b")  # ready to take the task over

        lab.cut(1)  # a's conductor and its task live on; only the network is gone
        cut_at = time.monotonic()
        wait_for(lambda: not psutil.pid_exists(task_pid), TTL + 5, 0.02, "the task on a killed by its fence")
        killed_after = time.monotonic() - cut_at
        assert not [m for m in lines(marks) if m.startswith("start b")], "b started it before a's run was dead"
        assert killed_after <= TTL + 1.0, f"the task was killed {killed_after:.1f}s after the cut (ttl {TTL}s)"

        wait_for(lambda: show(lab, 2, endpoint, job)["state"] == "COMPLETED", 60, 0.5, "the job completed on b")
        assert [m for m in lines(marks) if m.startswith("end")] == ["end b"], lines(marks)
        assert [m.split()[1] for m in lines(marks) if m.startswith("start")] == ["a", "b"], lines(marks)

        lab.heal(1)
        wait_for(lambda: "a" in [n["name"] for n in json.loads(
            lab.cli(2, "nodes", "--etcd", endpoint, "--json").stdout)], 60, 0.5, "a back among the nodes")
        again = post(lab, 2, endpoint, {"name": "after", "layers": [{"tasks": [
            {"cmd": ["true"], "needs": {"labels": {"machine": "a"}}}]}]}, tmp_path)
        wait_for(lambda: show(lab, 2, endpoint, again)["state"] == "COMPLETED", 60, 0.5, "a ran work again")
        assert show(lab, 2, endpoint, f"{again}.0.0")["node"] == "a"
        assert "Traceback" not in log_a.read_text()
