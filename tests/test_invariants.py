"""The invariants of docs/design.md, each against a real etcd, at the level where it is kept."""
from __future__ import annotations

import threading
from pathlib import Path

from conductor import codec, spec, states
from conductor.board import Board
from conductor.claims import Claims, Outcome, Ready
from conductor.client import Client
from conductor.keys import Keys
from conductor.model import MAX_RECORDS
from conductor.ops import KV, Event, Put
from conductor.follow import FollowHandler
from conductor.lifecycle import Cause
from conductor.store import Store
from harness import live_lease, tasks_in, wait_for


def ready_entries(store: Store, keys: Keys) -> list[Ready]:
    """The claimable tasks of user u: their QUEUED task keys (a task is its own queue entry)."""
    return tasks_in(store, keys, states.QUEUED)


def one_task_job(board: Board, **task) -> str:
    return board.post(spec.validate_job({"name": "j", "layers": [{"tasks": [{"cmd": ["true"], **task}]}]}), "u")


def test_fenced_finish_commits_nothing_once_the_claim_is_gone(client: Client):
    """Invariant 1: a node whose claim expired (or was taken over) writes nothing."""
    store, keys, board = client.store, client.keys, client.board
    job = one_task_job(board)
    lease = live_lease(store, keys, 5)
    claims = Claims(store, keys, "node-a")
    [held], _ = claims.claim(ready_entries(store, keys), lease)
    store.revoke(lease)  # as if the lease expired: its alive key vanishes, and the claim with it
    before = store.get(keys.task("u", held.id))
    committed, lost = claims.finish([(held, Outcome(Cause.EXIT, "exit 0", 0))])
    assert committed == [] and [c.id for c in lost] == [held.id]
    after = store.get(keys.task("u", held.id))
    assert after.mod_revision == before.mod_revision, "nothing was written"
    assert client.counts(job)["completed"] == 0, "nothing was counted"
    # someone else may now recover it, exactly once
    other = Claims(store, keys, "node-b")
    assert other.recover("u", held.id, lease) == states.QUEUED
    assert other.recover("u", held.id, lease) is None
    [again], _ = other.claim(ready_entries(store, keys), live_lease(store, keys, 5))
    assert again.task["attempts"] == 2


def test_no_claim_commits_on_a_lease_that_ended(client: Client):
    """Invariant 1, at the claim: the claim compares the lease's alive key present, so a node whose
    lease ended (its alive key gone) claims nothing, and no RUNNING task names a dead lease."""
    store, keys, board = client.store, client.keys, client.board
    one_task_job(board)
    lease = live_lease(store, keys, 5)
    store.revoke(lease)
    taken, stale = Claims(store, keys, "late").claim(ready_entries(store, keys), lease)
    assert taken == [] and stale == set(), "nothing claimed, and the task is not stale for others"
    assert tasks_in(store, keys, states.RUNNING) == [] and len(ready_entries(store, keys)) == 1


def test_a_kill_request_the_finish_had_not_seen_is_deleted_with_the_outcome(client: Client):
    """A finish deletes only the kill requests its node has seen and compares the others absent: a
    request written after the node looked makes the finish read again, and it is deleted in the
    same transaction as the outcome (never left behind for a later run of the task)."""
    store, keys, board = client.store, client.keys, client.board
    one_task_job(board)
    claims = Claims(store, keys, "n", has_kill=lambda user, task: False)  # it never saw the request
    [held] = claims.claim(ready_entries(store, keys), live_lease(store, keys, 10))[0]
    store.put(keys.kill("u", held.id), codec.pack({"action": "kill", "by": "ann", "grace": 1, "at": 1.0}))
    [done], lost = claims.finish([(held, Outcome(Cause.EXIT, "exit 0", 0))], writer="n")
    assert lost == [] and done.state == states.COMPLETED
    assert store.get(keys.kill("u", held.id)) is None, "the request went with the outcome"
    assert codec.unpack(store.get(keys.task("u", held.id)).value)["state"] == states.COMPLETED


def test_a_claim_taken_by_another_node_fences_the_first(client: Client):
    store, keys, board = client.store, client.keys, client.board
    one_task_job(board)
    a, b = Claims(store, keys, "a"), Claims(store, keys, "b")
    entries = ready_entries(store, keys)
    lease_a, lease_b = live_lease(store, keys, 5), live_lease(store, keys, 5)
    [held], _ = a.claim(entries, lease_a)
    taken, stale = b.claim(entries, lease_b)  # the same snapshot: must lose
    assert taken == [] and stale == {held.id}


def test_a_big_job_is_never_seen_half_written(client: Client):
    """Invariant 2: chunks of tasks first, the job key last; a watcher sees no job before all of it."""
    store, keys = client.store, client.keys
    seen: list[tuple[str, int]] = []
    done = threading.Event()

    class Recorder(FollowHandler):
        def reset(self, kvs: list[KV], revision: int) -> None:
            done.set()

        def events(self, events: list[Event], revision: int) -> None:
            seen.extend((ev.kv.key, ev.kv.mod_revision) for ev in events if ev.kind == "put")

    follower = store.follow(keys.objects("tester"), Recorder())
    done.wait(5)
    n = 700
    bulky = {"BULK": "x" * 3000}  # 2 MB of tasks in all: more than one request
    job = client.post({"name": "big", "layers": [{"tasks": [{"cmd": ["true", str(i)], "env": bulky} for i in range(n)]},
                                                 {"tasks": [{"cmd": ["true"]}]}]})
    wait_for(lambda: any(k.endswith(f"/jobs/{job}") for k, _ in seen), 10)
    follower.stop()
    job_rev = min(r for k, r in seen if k.endswith(f"/jobs/{job}"))
    chunk_revs = {k: r for k, r in seen if "/chunks/" in k}
    assert chunk_revs and max(chunk_revs.values()) < job_rev, "every chunk was written before the job appeared"
    assert len(set(chunk_revs.values())) > 1, "the job was split into several transactions"
    specs = sum(len(codec.unpack(store.get(k).value)["specs"]) for k in chunk_revs)
    assert specs == n + 1, "the chunks hold every task"
    assert not any("/tasks/" in k for k, _ in seen), "no task has a key before it runs"
    assert client.job(job)["tasks"] == n + 1
    assert len(tasks_in(store, keys, states.QUEUED, client.user, job + ".0.")) == n, "its first layer was queued after"


def test_bounded_storage_result_cap_log_tail_and_records(client: Client, shared_etcd, start_nodes):
    """Invariant 6: result over the cap is refused clearly; log tail and history are capped."""
    start_nodes(shared_etcd.endpoint, 1)
    job = client.post({"name": "caps", "layers": [{"tasks": [
        {"cmd": ["sh", "-c", "head -c 70000 /dev/zero > $CONDUCTOR_RESULT"], "max_attempts": 1},
        {"cmd": ["sh", "-c", "seq 1 100000"]},
        {"cmd": ["false"], "max_attempts": 30}], "on_error": "continue"}]})
    client.wait(job, timeout=60)
    big = client.task(f"{job}.0.0")
    assert big["state"] == "ERRORED" and "result is 70000 bytes, over the cap of 65536 bytes" in big["reason"]
    assert big["result"] is None
    noisy = client.task(f"{job}.0.1")
    assert noisy["log"]["size"] > 500_000 and noisy["log"]["truncated"]
    assert len(noisy["log"]["tail"]) <= 8192 and noisy["log"]["tail"].endswith("100000\n")
    retried = client.task(f"{job}.0.2")
    assert retried["attempts"] == 30 and len(retried["records"]) == MAX_RECORDS
    assert retried["records_dropped"] == 30 * 3 - MAX_RECORDS  # QUEUED + (RUNNING, ERRORED, QUEUED) x 29 + RUNNING, ERRORED


def test_layer_order_no_claim_before_lower_orders_are_done(client: Client):
    """Invariant 3: nothing of a later layer is ready while an earlier one runs."""
    store, keys, board = client.store, client.keys, client.board
    job = board.post(spec.validate_job({"name": "o", "layers": [
        {"order": 1, "tasks": [{"cmd": ["true"]}]}, {"order": 2, "tasks": [{"cmd": ["true"]}]}]}), "u")
    claims, lease = Claims(store, keys, "n"), live_lease(store, keys, 10)
    ready = ready_entries(store, keys)
    assert [r.id for r in ready] == [f"{job}.0.0"]
    [held], _ = claims.claim(ready, lease)
    assert ready_entries(store, keys) == []
    [done], _ = claims.finish([(held, Outcome(Cause.EXIT, "exit 1", 1))])
    assert done.state == states.QUEUED and [r.id for r in ready_entries(store, keys)] == [f"{job}.0.0"]
    [held], _ = claims.claim(ready_entries(store, keys), lease)
    claims.finish([(held, Outcome(Cause.EXIT, "exit 0", 0))])
    assert board.settle(job, "u")
    assert [r.id for r in ready_entries(store, keys)] == [f"{job}.1.0"]


def test_orphans_are_found_from_running_tasks(client: Client):
    """Invariant 4: a RUNNING task whose lease has no alive key is an orphan; the sweep's read finds it."""
    store, keys, board = client.store, client.keys, client.board
    one_task_job(board, max_attempts=1)
    claims, lease = Claims(store, keys, "gone"), live_lease(store, keys, 5)
    [held], _ = claims.claim(ready_entries(store, keys), lease)
    assert claims.orphans() == []
    store.revoke(lease)
    assert claims.orphans() == [("u", held.id, lease)]
    assert Claims(store, keys, "rescuer").recover("u", held.id, lease) == states.QUEUED, "a lost node is no failure"
    assert claims.orphans() == []
    task = codec.unpack(store.get(keys.task("u", held.id)).value)
    assert "node gone was lost" in task["records"][-1]["reason"]
    assert (task["attempts"], task["failures"], task["disruptions"]) == (1, 0, 1)


def test_transition_table_is_enforced():
    import pytest

    from conductor.states import BadTransition, check_task

    check_task(states.QUEUED, states.RUNNING)
    with pytest.raises(BadTransition):
        check_task(states.COMPLETED, states.RUNNING)
    with pytest.raises(BadTransition):
        check_task(states.PENDING, states.RUNNING)


def test_paused_job_is_not_claimed(client: Client):
    store, keys, board = client.store, client.keys, client.board
    job = board.post(spec.validate_job({"name": "p", "paused": True, "layers": [{"tasks": [{"cmd": ["true"]}]}]}), "u")
    assert ready_entries(store, keys) == [], "nothing of a paused job is queued"
    assert board.load_task("u", f"{job}.0.0")[0]["state"] == states.PENDING


def test_values_keep_unknown_fields(client: Client):
    store, keys, board = client.store, client.keys, client.board
    job = one_task_job(board)
    key = keys.task("u", f"{job}.0.0")
    value = board.load_task("u", f"{job}.0.0")[0]  # what its chunk gives: written as its key
    value["from_the_future"] = {"x": 1}
    store.txn([], [Put(key, codec.pack(value))])
    claims, lease = Claims(store, keys, "n"), live_lease(store, keys, 10)
    [held], _ = claims.claim(ready_entries(store, keys), lease)
    claims.finish([(held, Outcome(Cause.EXIT, "exit 0", 0))])
    assert codec.unpack(store.get(key).value)["from_the_future"] == {"x": 1}


def test_cli_tail_of_a_missing_result_is_none(client: Client, tmp_path: Path):
    job = one_task_job(client.board)
    assert client.result(f"{job}.0.0") is None


def test_a_large_batch_of_finishes_is_split_to_fit_etcd_limits(client: Client):
    """32 outcomes with near-cap results and full log tails: more ops and bytes than one request takes."""
    store, keys, board = client.store, client.keys, client.board
    job = board.post(spec.validate_job({"name": "b", "layers": [{"tasks": [{"cmd": ["true"]}] * 32}]}), "u")
    claims, lease = Claims(store, keys, "n"), live_lease(store, keys, 30)
    held = []
    while len(held) < 32:
        got, _ = claims.claim(ready_entries(store, keys)[:16], lease)
        held += got
    outcomes = [(c, Outcome(Cause.EXIT, "exit 0", 0, result=b"r" * 60_000, log_tail=b"l" * 8192, log_size=9000))
                for c in held]
    committed, lost = claims.finish(outcomes, writer="w")
    assert len(committed) == 32 and lost == []
    assert client.counts(job)["completed"] == 32
    assert store.count(keys.count("u", job)) == 2, "a node's claims and finishes add up in a counter key each"
    assert len(codec.unpack(store.get(keys.result("u", f"{job}.0.31")).value)["data"]) == 60_000


def test_an_orphaned_task_keeps_its_layer_open(client: Client):
    """Between a lease expiring and its task being requeued, the layer is not done (layer order)."""
    store, keys, board = client.store, client.keys, client.board
    job = board.post(spec.validate_job({"name": "o", "layers": [{"tasks": [{"cmd": ["true"]}]},
                                                                 {"tasks": [{"cmd": ["true"]}]}]}), "u")
    claims, lease = Claims(store, keys, "dying"), live_lease(store, keys, 5)
    [held], _ = claims.claim(ready_entries(store, keys), lease)
    store.revoke(lease)  # lease gone, its task left RUNNING: an orphan
    assert board.settle(job, "u") is False
    assert ready_entries(store, keys) == [], "the next layer did not start"
    assert Claims(store, keys, "rescuer").recover("u", held.id, lease) == states.QUEUED
    [again], _ = claims.claim(ready_entries(store, keys), live_lease(store, keys, 5))
    claims.finish([(again, Outcome(Cause.EXIT, "exit 0", 0))])
    assert board.settle(job, "u")
    assert [r.id for r in ready_entries(store, keys)] == [f"{job}.1.0"]


def test_many_layers_of_one_order_start_and_finish_together(client: Client):
    """Five layers of 40 tasks starting at once, and 130 layers in one job: every txn fits etcd."""
    store, keys, board = client.store, client.keys, client.board
    job = board.post(spec.validate_job({"name": "wide", "layers": [
        {"order": 0, "tasks": [{"cmd": ["true"]}]}] + [
        {"order": 1, "tasks": [{"cmd": ["true"]}] * 40} for _ in range(5)]}), "u")
    claims, lease = Claims(store, keys, "n"), live_lease(store, keys, 30)
    for _ in range(20):
        ready = ready_entries(store, keys)
        if not ready:
            break
        for start in range(0, len(ready), 16):
            got, _ = claims.claim(ready[start:start + 16], lease)
            claims.finish([(c, Outcome(Cause.EXIT, "exit 0", 0)) for c in got])
        board.settle(job, "u")
    assert codec.unpack(store.get(keys.job("u", job)).value)["state"] == states.COMPLETED
    tall = board.post(spec.validate_job({"name": "tall", "layers": [{"tasks": []} for _ in range(130)]}), "u")
    assert codec.unpack(store.get(keys.job("u", tall)).value)["state"] == states.COMPLETED
