"""bench/harness.py's ``auth`` option (issue 10): etcd's auth is really on, the conductors run as
the node account, the bench's client acts as an ordinary user, and a job still completes.

bench/harness.py is loaded by path: ``harness`` on the tests' path is tests/harness.py.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from conductor.client import Client
from conductor.errors import AuthFailed, PermissionDenied

BENCH_HARNESS = Path(__file__).resolve().parent.parent / "bench" / "harness.py"


def bench_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_harness", BENCH_HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_cluster_with_auth_runs_a_job_as_its_user() -> None:
    bench = bench_harness()
    with bench.Cluster(auth=True) as cl:
        cl.start_nodes(1, slots=2)  # waits until the admin client lists it: the node authenticated
        client = cl.client()
        assert client.user == bench.BENCH_USER
        job_id = client.post({"name": "authbench", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
        assert client.wait(job_id, timeout=30)["state"] == "COMPLETED"
        assert client.task(f"{job_id}.0.0")["node"] == "b1"
        with pytest.raises(PermissionDenied):  # only admins list nodes: etcd's auth is on
            client.nodes()
        with Client(etcd=cl.endpoint, namespace=bench.NAMESPACE, user="nobody") as anonymous:
            with pytest.raises((AuthFailed, PermissionDenied)):
                anonymous.nodes()
