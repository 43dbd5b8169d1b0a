"""etcd stopping, restarting and losing members under a running cluster."""
from __future__ import annotations

import time
from pathlib import Path

import psutil

from conductor.client import Client
from harness import EtcdCluster, wait_for


def appender(path: Path, sleep: float = 0.0) -> dict:
    return {"cmd": ["sh", "-c", f'sleep {sleep}; echo "$CONDUCTOR_TASK_ID" >> {path}']}


def test_etcd_restart_mid_run_loses_nothing_and_runs_nothing_twice(etcd, namespace, start_nodes, tmp_path: Path):
    out = tmp_path / "ids.txt"
    start_nodes(etcd.endpoint, 2, ttl=8, slots=3)
    with Client(etcd=etcd.endpoint, namespace=namespace, user="tester") as client:
        job = client.post({"name": "through-restart", "layers": [
            {"tasks": [appender(out, 0.4) for _ in range(30)]},
            {"tasks": [appender(out, 0.1) for _ in range(10)]}]})
        wait_for(lambda: out.exists() and len(out.read_text().split()) >= 5, 30, what="some tasks done")
    etcd.stop()
    time.sleep(2.5)  # tasks keep running and finishing while etcd is away; their commits wait
    etcd.start()
    with Client(etcd=etcd.endpoint, namespace=namespace, user="tester") as client:
        assert client.wait(job, timeout=60)["state"] == "COMPLETED"
        # a job posted after the restart is seen: watches were re-created
        later = client.post({"name": "after", "layers": [{"tasks": [appender(out)]}]})
        assert client.wait(later, timeout=20)["state"] == "COMPLETED"
    ids = out.read_text().split()
    expected = [f"{job}.0.{i}" for i in range(30)] + [f"{job}.1.{i}" for i in range(10)] + [f"{later}.0.0"]
    assert sorted(ids) == sorted(expected), "every task ran exactly once"


def test_no_busy_spin_while_etcd_is_down(etcd, namespace, start_nodes):
    node = start_nodes(etcd.endpoint, 1, ttl=10)[0]
    with Client(etcd=etcd.endpoint, namespace=namespace, user="tester") as client:
        job = client.post({"name": "warm", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
        assert client.wait(job, timeout=20)["state"] == "COMPLETED"
    proc = psutil.Process(node.pid)
    etcd.stop()
    time.sleep(1.0)
    before = proc.cpu_times()
    time.sleep(4.0)
    after = proc.cpu_times()
    used = (after.user + after.system) - (before.user + before.system)
    assert used < 0.6, f"the conductor used {used:.2f}s of CPU in 4s while etcd was down"
    etcd.start()
    with Client(etcd=etcd.endpoint, namespace=namespace, user="tester") as client:
        job = client.post({"name": "back", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
        assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    assert node.alive()


def test_three_member_cluster_survives_losing_a_member(tmp_path: Path, namespace, start_nodes):
    cluster = EtcdCluster(tmp_path / "cluster", 3).start()
    try:
        out = tmp_path / "ids.txt"
        start_nodes(cluster.endpoints, 2, ttl=6, slots=2)
        with Client(etcd=cluster.endpoints, namespace=namespace, user="tester") as client:
            job = client.post({"name": "quorum", "layers": [{"tasks": [appender(out, 0.3) for _ in range(20)]}]})
            wait_for(lambda: out.exists() and len(out.read_text().split()) >= 4, 30, what="some tasks done")
            cluster.members[0].kill()  # one member gone; the other two keep quorum
            assert client.wait(job, timeout=60)["state"] == "COMPLETED"
        assert sorted(out.read_text().split()) == sorted(f"{job}.0.{i}" for i in range(20))
    finally:
        cluster.stop()
