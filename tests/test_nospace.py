"""etcd errors by gRPC status code, and a full etcd (NOSPACE alarm): said once, shown, recovered.
Real etcd (one with a small quota), real conductor processes."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conductor.client import Client
from conductor.errors import LeaseLost, NoSpace, RequestRefused, StoreUnavailable
from conductor.ops import Put
from conductor.store import Store
from harness import EtcdServer, conductor_cli, wait_for

QUOTA = 8 * 1024 * 1024
FULL = "etcd is out of space (NOSPACE alarm): it refuses every write"
BACK = "etcd takes writes again"


# ---- errors by code --------------------------------------------------------------------------------


def test_refusals_are_classified_by_code(client):
    store, key = client.store, client.keys.meta("probe")
    with pytest.raises(RequestRefused) as too_many:
        store.txn([], [Put(f"{key}/{i}", b"x") for i in range(200)])  # etcd allows 128 ops
    assert getattr(too_many.value, "code") == "INVALID_ARGUMENT"
    with pytest.raises(RequestRefused):
        store.txn([], [Put(key, b"a"), Put(key, b"b")])  # one key twice
    with pytest.raises(LeaseLost):
        store.put(key, b"x", lease=0x7fffffff)  # no such lease
    store.revoke(0x7fffffff)  # revoking a lease that is gone is not an error
    assert RequestRefused.exit_code != LeaseLost.exit_code and issubclass(NoSpace, StoreUnavailable)


# ---- a full etcd ---------------------------------------------------------------------------------


@pytest.fixture
def small_etcd(tmp_path: Path):
    server = EtcdServer(tmp_path / "etcd" / "data", "small", extra=["--quota-backend-bytes", str(QUOTA)]).start()
    yield server
    server.stop()


def fill(store: Store) -> int:
    """Put 1 MiB values until etcd raises its NOSPACE alarm; returns how many went in."""
    blob = os.urandom(1024 * 1024)
    for i in range(64):
        try:
            store.put(f"/filler/{i}", blob)
        except NoSpace:
            return i
    raise AssertionError("etcd never ran out of space")


def test_a_full_etcd_is_said_once_shown_refused_and_recovered(small_etcd, namespace, start_nodes):
    endpoint = small_etcd.endpoint
    common = ["--etcd", endpoint, "--namespace", namespace]
    nodes = start_nodes(endpoint, 2, ttl=4)
    with Client(etcd=endpoint, namespace=namespace, user="tester") as client:
        slow = client.post({"name": "through", "layers": [{"tasks": [{"cmd": ["sleep", "3"]}]}]})
        wait_for(lambda: client.counts(slow)["running"] == 1, 20, what="the slow task running")
        filler = Store(endpoint)
        filler.space.announce = False
        assert fill(filler) > 0
        for node in nodes:  # each node meets the alarm within a sweep or two (--sweep 1)
            wait_for(lambda: FULL in node.log(), 20, what=f"{node.name} says etcd is full")
        time.sleep(4)  # several sweeps and claim tries later: still said once, and the task ended meanwhile
        for node in nodes:
            assert node.log().count(FULL) == 1, node.log()
            assert "Traceback" not in node.log() and "unexpected error" not in node.log(), node.log()
            assert node.alive()

        shown = conductor_cli("nodes", *common)
        assert shown.returncode == 0 and "etcd alarm: NOSPACE" in shown.stdout, shown.stdout + shown.stderr
        listed = conductor_cli("show", *common)
        assert listed.returncode == 0 and "etcd alarm: NOSPACE" in listed.stderr
        jobs_before = client.store.count(client.keys.job(client.user))
        refused = '{"name": "refused", "layers": [{"tasks": [{"cmd": ["true"]}]}]}'
        post = conductor_cli("post", *common, "-", input=refused)
        assert post.returncode == NoSpace.exit_code, post.stderr
        assert post.stderr.startswith("error: etcd is out of space (NOSPACE alarm)") and "Traceback" not in post.stderr
        assert "conductor gc" in post.stderr, "the error says how to recover"
        assert client.store.count(client.keys.job(client.user)) == jobs_before, "nothing was written"

        filler.delete_prefix("/filler/")
        recover = conductor_cli("gc", *common, "--compact", "--defrag", "--disarm")
        assert recover.returncode == 0, recover.stderr
        assert f"defragmented {endpoint}" in recover.stdout and "disarmed NOSPACE" in recover.stdout
        assert client.alarms() == []
        for node in nodes:  # carried on by itself
            wait_for(lambda: BACK in node.log(), 20, what=f"{node.name} says etcd is back")
        assert client.wait(slow, timeout=30)["state"] == "COMPLETED", "the outcome held during the alarm commits"
        later = client.post({"name": "after", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
        assert client.wait(later, timeout=30)["state"] == "COMPLETED"
        filler.close()
    for node in nodes:
        assert node.log().count(FULL) == 1 and node.log().count(BACK) == 1
        assert "Traceback" not in node.log()
