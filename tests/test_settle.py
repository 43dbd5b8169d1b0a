"""Settling and queueing layers against a real etcd (and real conductors): writes that always fit
etcd's limits, and staged tasks that were never committed are never queued."""
from __future__ import annotations

from typing import Any

import pytest

from conductor import codec, states
from conductor.claims import Claims, Outcome
from conductor.client import Client
from conductor.control import Stager
from conductor.lifecycle import Cause
from harness import live_lease, tasks_in

BIG_ENV = {"BIG": "x" * (48 * 1024)}  # under the 64 KB a task may have; 40 of them are 1.9 MB


def bulky(count: int) -> list[dict[str, Any]]:
    return [{"name": f"b{n}", "cmd": ["true"], "env": BIG_ENV} for n in range(count)]


def ready_ids(client: Client) -> list[str]:
    return sorted(e.id for e in tasks_in(client.store, client.keys, states.QUEUED, client.user))


def finish_ready(client: Client, ok: bool = True) -> None:
    """Claim and finish every ready task as one node would (real claims, real fenced finishes)."""
    store, keys = client.store, client.keys
    claims = Claims(store, keys, "n")
    ready = tasks_in(store, keys, states.QUEUED, client.user)
    for start in range(0, len(ready), 16):
        got, _ = claims.claim(ready[start:start + 16], live_lease(store, keys, 30))
        claims.finish([(c, Outcome(Cause.EXIT, "exit 0" if ok else "exit 1", 0 if ok else 1)) for c in got])


def layer(client: Client, layer_id: str) -> dict[str, Any]:
    return codec.unpack(client.store.get(client.keys.layer(client.user, layer_id)).value)


def test_a_layer_of_bulky_tasks_starts_with_one_write(client: Client):
    """40 tasks of 48 KB each (1.9 MB, more than one request) are posted as chunks; the settle
    that starts their layer writes the layer alone, and every task is claimable from then on."""
    job = client.post({"name": "bulky", "layers": [{"tasks": [{"cmd": ["true"]}]}, {"tasks": bulky(40)}]})
    assert ready_ids(client) == [f"{job}.0.0"]
    assert client.store.count(client.keys.chunk(client.user, f"{job}.1")) > 1, "more chunks than one request holds"
    finish_ready(client)
    before = client.store.revision()
    assert client.board.settle(job, client.user)
    assert ready_ids(client) == sorted(f"{job}.1.{n}" for n in range(40))
    assert layer(client, f"{job}.1")["enqueued"] and layer(client, f"{job}.1")["state"] == states.RUNNING
    assert client.store.revision() == before + 1, "one settle transaction started the layer"
    finish_ready(client)
    assert client.board.settle(job, client.user)
    assert client.job(job)["state"] == states.COMPLETED


def test_uncommitted_staged_tasks_are_never_offered_nor_run(client: Client):
    """A batch staged into a layer and never committed (its writer died, or its commit was
    refused) is never part of the layer: not offered when the layer starts, not shown, never run."""
    job = client.post({"name": "staged", "layers": [{"tasks": [{"cmd": ["true"]}]},
                                                     {"tasks": [{"cmd": ["true"]}] * 2}]})
    dead = Stager(client.board, client.user, f"{job}.1", token="add-deadbeef")
    [orphan] = dead.stage([{"name": "orphan", "cmd": ["true"]}], guard=[])
    assert orphan == f"{job}.1.2" and client.store.get(client.keys.chunk(client.user, f"{job}.1", 2)) is not None
    finish_ready(client)
    assert client.board.settle(job, client.user)
    assert ready_ids(client) == [f"{job}.1.0", f"{job}.1.1"]
    assert client.board.load_task(client.user, orphan) is None, "the uncommitted task is no task of the layer"
    assert [t["id"] for t in client.show(f"{job}.1")["task_list"]] == [f"{job}.1.0", f"{job}.1.1"]
    finish_ready(client)
    client.board.settle(job, client.user)
    assert client.job(job)["state"] == states.COMPLETED
    assert client.counts(job)["completed"] == 3


def test_adding_bulky_tasks_stages_them_in_writes_that_fit(client: Client):
    """80 added tasks of 48 KB each (3.8 MB) are staged in several transactions and all run."""
    job = client.post({"name": "add", "layers": [{"tasks": [{"cmd": ["true"]}]}, {"tasks": []}]})
    added = client.add_tasks(f"{job}.1", bulky(80))
    assert added == [f"{job}.1.{n}" for n in range(80)]
    finish_ready(client)
    assert client.board.settle(job, client.user)
    assert ready_ids(client) == sorted(added)


@pytest.mark.parametrize("count", [40, 200])
def test_a_job_whose_second_layer_is_bulky_completes_on_real_conductors(client: Client, shared_etcd, start_nodes,
                                                                       count: int):
    start_nodes(shared_etcd.endpoint, 2, slots=4)
    job = client.post({"name": f"bulky-{count}", "layers": [{"tasks": [{"cmd": ["true"]}]},
                                                            {"tasks": bulky(count)}]})
    assert client.wait(job, timeout=180)["state"] == states.COMPLETED
    counts = client.counts(job)
    assert counts["completed"] == count + 1 and counts["errored"] == 0


def test_a_settle_that_moves_more_layers_than_one_transaction_holds_goes_on_in_several(client: Client):
    """150 empty layers after a running one, and 130 layers of one order starting together: each
    is more layer writes than etcd takes in one transaction, so the plan is capped and goes on."""
    one = [{"cmd": ["true"]}]
    tall = client.post({"name": "tall", "layers": [{"tasks": one}] + [{"tasks": []} for _ in range(150)]})
    finish_ready(client)
    assert client.board.settle(tall, client.user)
    assert client.job(tall)["state"] == states.COMPLETED
    wide = client.post({"name": "wide", "layers": [{"order": 0, "tasks": one}] +
                        [{"order": 1, "tasks": one} for _ in range(130)]})
    finish_ready(client)
    assert client.board.settle(wide, client.user)
    assert ready_ids(client) == sorted(f"{wide}.{i}.0" for i in range(1, 131))
    finish_ready(client)
    assert client.board.settle(wide, client.user)
    assert client.job(wide)["state"] == states.COMPLETED
