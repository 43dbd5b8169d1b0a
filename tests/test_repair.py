"""The safety nets, each forced to work: a watch re-listed after compaction, a handler's error that
reaches its owner, the sweeper's repairs, and self-fencing when etcd cannot be reached."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conductor import codec
from conductor.client import Client
from conductor.errors import NotFound
from conductor.follow import Follower, FollowHandler
from conductor.ops import KV, Event, Put
from conductor.store import Store
from harness import live_lease, tasks_in, wait_for


class Recorder(FollowHandler):
    def __init__(self, gate: threading.Event | None = None, fail_on: str | None = None):
        self.view: dict[str, bytes] = {}
        self.gate = gate
        self.fail_on = fail_on
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def reset(self, kvs: list[KV], revision: int) -> None:
        with self.lock:
            self.view = {kv.key: kv.value for kv in kvs}

    def events(self, events: list[Event], revision: int) -> None:
        if self.gate is not None:
            self.gate.wait()
        with self.lock:
            for ev in events:
                if self.fail_on and ev.kv.key.endswith(self.fail_on):
                    raise RuntimeError(f"a bug in the handler at {ev.kv.key}")
                if ev.kind == "put":
                    self.view[ev.kv.key] = ev.kv.value
                else:
                    self.view.pop(ev.kv.key, None)

    def failed(self, exc: BaseException) -> None:
        self.error = exc


class SlowFirstListing(Recorder):
    """Holds up its first listing, while the watch that follows it is already open."""

    def __init__(self, gate: threading.Event):
        super().__init__()
        self.first = gate
        self.listings = 0

    def reset(self, kvs: list[KV], revision: int) -> None:
        self.listings += 1
        if self.listings == 1:
            self.first.wait()
        super().reset(kvs, revision)


class SlowFirstScan:
    """The real store, but its first listing waits for a gate: the revision that listing is pinned
    to (where the follower's watch starts) can be compacted meanwhile."""

    def __init__(self, store: Store, gate: threading.Event):
        self.store, self.gate, self.scans = store, gate, 0

    def scan(self, prefix: str, *, revision: int = 0) -> tuple[list[KV], int]:
        self.scans += 1
        if self.scans == 1:
            self.gate.wait()
        return self.store.scan(prefix, revision=revision)

    def watch(self, prefix: str, start_revision: int) -> Any:
        return self.store.watch(prefix, start_revision)


def _churn(store: Store, prefix: str) -> dict[str, bytes]:
    """200 writes, a delete and a compaction up to now; returns what etcd holds under ``prefix``."""
    for i in range(200):
        store.put(prefix + f"k{i % 20}", str(i).encode())
    store.delete(prefix + "before")
    store.compact(store.revision())
    return {kv.key: kv.value for kv in store.scan(prefix)[0]}


def test_a_listing_whose_revision_was_compacted_lists_again_and_ends_up_exact(client: Client):
    """Between a watch's creation and the listing pinned to its revision, etcd compacted that
    revision: the listing fails, the follower lists again, and its view is exactly what etcd holds."""
    store, prefix = client.store, client.keys.namespace + "churn/"
    gate = threading.Event()
    slow, rec = SlowFirstScan(store, gate), Recorder()
    store.put(prefix + "before", b"0")
    follower = Follower(slow, prefix, rec, name="test-follow")
    follower.start()
    try:
        wait_for(lambda: slow.scans == 1, 10)
        expected = _churn(store, prefix)
        gate.set()
        wait_for(lambda: slow.scans >= 2 and follower.resets >= 1, 30, what="a re-list after the compaction")
        wait_for(lambda: rec.view == expected, 10, what="the view matches etcd")
    finally:
        gate.set()
        follower.stop()


def test_a_watch_held_up_by_its_first_listing_ends_up_exact(client: Client):
    """The watch opens before the listing, so writes and a compaction while the handler holds up
    its first listing are delivered afterwards as events: no re-list, and the view is exact."""
    store, prefix = client.store, client.keys.namespace + "held/"
    gate = threading.Event()
    rec = SlowFirstListing(gate)
    store.put(prefix + "before", b"0")
    follower = store.follow(prefix, rec, name="test-follow")
    try:
        wait_for(lambda: rec.listings == 1, 10)
        expected = _churn(store, prefix)
        gate.set()
        wait_for(lambda: rec.view == expected, 30, what="the view matches etcd")
        assert follower.resets == 1
    finally:
        gate.set()
        follower.stop()


def test_a_handler_that_raises_stops_its_watch_and_the_owner_hears_of_it(client: Client):
    store, prefix = client.store, client.keys.namespace + "bug/"
    rec = Recorder(fail_on="boom")
    follower = store.follow(prefix, rec, name="test-bug")
    wait_for(lambda: follower.resets == 1, 10)
    store.put(prefix + "boom", b"x")
    wait_for(lambda: rec.error is not None, 10, what="the error reached the handler's owner")
    assert "a bug in the handler" in str(rec.error)
    time.sleep(0.5)
    assert follower.resets == 1 and not follower.is_alive(), "no silent re-list loop"


def test_wait_on_a_job_removed_mid_wait_raises_not_found(client: Client):
    job = client.post({"name": "gone", "layers": [{"tasks": [{"cmd": ["true"]}]}]})  # no node runs it
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            client.wait(job, timeout=30)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)
    client.store.delete(client.keys.job(client.user, job))
    thread.join(10)
    assert not thread.is_alive(), "wait returned instead of hanging"
    assert outcome and isinstance(outcome[0], NotFound), outcome


def test_the_sweeper_repairs_a_missed_settle_and_a_missed_orphan(client: Client, shared_etcd, start_nodes):
    """Work left as a crashed writer would leave it, with no watch event to announce it: a layer whose
    tasks all finished but that was never settled, and a RUNNING task whose lease is gone."""
    from conductor.claims import Claims
    from conductor.lifecycle import Cause, Outcome

    store, keys = client.store, client.keys
    job = client.post({"name": "unsettled", "layers": [{"tasks": [{"cmd": ["true"]}]}, {"tasks": [{"cmd": ["true"]}]}]})
    claims = Claims(store, keys, "ghost")
    ready = tasks_in(store, keys, "QUEUED", client.user)
    got, _ = claims.claim(ready, live_lease(store, keys, 30))
    claims.finish([(c, Outcome(Cause.EXIT, "exit 0", 0)) for c in got])  # finished, never settled
    orphan = client.post({"name": "orphaned", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    lease = live_lease(store, keys, 2)
    ready = tasks_in(store, keys, "QUEUED", client.user)
    claims.claim(ready, lease)
    store.revoke(lease)  # its "node" is gone before any conductor watched
    assert client.job(job)["state"] == "RUNNING" and client.task(f"{orphan}.0.0")["state"] == "RUNNING"
    start_nodes(shared_etcd.endpoint, 1)
    assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    assert client.wait(orphan, timeout=30)["state"] == "COMPLETED"


def test_a_node_cut_off_from_etcd_kills_its_task_before_its_lease_can_expire(etcd, namespace, start_nodes,
                                                                           tmp_path: Path):
    """etcd unreachable (its process stopped, not the conductor): no renewal comes back, so at the
    fence deadline (TTL - margin after the last renewal) the task is killed; when etcd returns the
    node rejoins and the task runs again, its loss counted as a disruption, not a failure."""
    pids = tmp_path / "pids"
    client = Client(etcd=etcd.endpoint, namespace=namespace, user="tester")
    node = start_nodes(etcd.endpoint, 1, ttl=2)[0]
    job = client.post({"name": "cut", "layers": [{"tasks": [
        {"cmd": ["sh", "-c", f"echo $$ >> {pids}; sleep 4"], "max_attempts": 1}]}]})
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 20, what="the task started")
    first = int(pids.read_text().split()[0])
    assert etcd.proc is not None
    etcd.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: not Path(f"/proc/{first}").exists(), 5, what="the task killed by self-fencing")
        assert time.monotonic() - stopped < 2.0, "killed within the TTL of the last renewal"
    finally:
        etcd.proc.send_signal(signal.SIGCONT)
    assert client.wait(job, timeout=60)["state"] == "COMPLETED"
    task = client.task(f"{job}.0.0")
    assert task["attempts"] >= 2 and task.get("failures", 0) == 0 and task.get("disruptions", 0) >= 1, task
    assert "self-fencing" in node.log()
    client.close()


@pytest.mark.parametrize("unused", [None])
def test_values_written_by_users_never_crash_a_node(client: Client, shared_etcd, start_nodes, unused):
    """Garbage in the watched prefix (a user with etcdctl) is not a node's bug: it is skipped."""
    node = start_nodes(shared_etcd.endpoint, 1)[0]
    client.store.txn([], [Put(client.keys.task(client.user, "not-a-task"), b"\xc1garbage")])
    job = client.post({"name": "after", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    assert node.alive()
    assert os.path.exists(node.log_path)


def test_a_failed_claim_drops_only_the_ready_revision_it_compared():
    """The race a hostile load found: a node claims a retried task with the revision it saw, the
    claim fails as stale because the task was queued again meanwhile, and the node must not
    forget the newer revision its cache already holds (no event would ever bring it back, and the
    task would wait forever)."""
    from conductor.cache import Cache
    from conductor.keys import Keys

    keys = Keys("/t/")
    cache = Cache(keys)
    task = {"id": "j.0.0", "job": "j", "layer": "j.0", "user": "u", "priority": 0, "state": "QUEUED"}

    def put(rev: int, **more: object) -> Event:
        return Event("put", KV(keys.task("u", "j.0.0"), codec.pack({**task, **more}), 1, rev, 1))

    layer = {"id": "j.0", "job": "j", "index": 0, "user": "u", "state": "RUNNING", "tasks": 1}
    cache.reset([KV(keys.job("u", "j"), codec.pack({"id": "j"}), 1, 1, 1),
                 KV(keys.layer("u", "j.0"), codec.pack(layer), 1, 1, 1)], 1)  # a running layer
    cache.events([put(40)], 40)
    cache.events([put(41, state="RUNNING", lease="00000000000000aa"), put(58)], 58)
    cache.drop({"j.0.0": 40})  # the claim compared revision 40: stale, but 58 is live
    assert cache.ready.get("j.0.0") is not None and cache.ready.get("j.0.0").mod_revision == 58
    assert cache.layer_busy("j.0")
    cache.drop({"j.0.0": 58})  # a claim of 58 that failed: that one is stale, the watch brings a newer
    assert cache.ready.get("j.0.0") is None and not cache.layer_busy("j.0")
