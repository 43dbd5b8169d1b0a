"""A job's counts as counter keys (conductor/counts.py): the pure rules, then against a real etcd
with real claims and fenced finishes."""
from __future__ import annotations

from conductor import codec, counts, spec, states
from conductor.claims import Claims, Outcome
from conductor.client import Client
from conductor.lifecycle import Cause
from harness import live_lease, tasks_in


def test_change_merge_and_total():
    task = {"layer": "j.2"}
    assert counts.change(task, states.COMPLETED, None) == {"2": {"COMPLETED": 1}}
    assert counts.change(task, None, states.ERRORED) == {"2": {"ERRORED": -1}}
    assert counts.change(task, states.QUEUED, None) == {}, "only RUNNING and final states are counted"
    assert counts.change(task, states.COMPLETED, states.RUNNING) == {"2": {"COMPLETED": 1, "RUNNING": -1}}
    both = counts.merge({"2": {"ERRORED": 1}}, {"2": {"ERRORED": -1, "COMPLETED": 1}})
    assert both == {"2": {"COMPLETED": 1}}, "zeros are dropped"
    values = [codec.pack({"0": {"COMPLETED": 3}, "1": {"ERRORED": 1}}), codec.pack({"0": {"COMPLETED": -1}}),
              b"not ours", codec.pack({"0": {"RUNNING": 5, "COMPLETED": "x", "QUEUED": 4}})]
    summed = counts.total(values)
    assert summed == {"0": {"COMPLETED": 2, "RUNNING": 5}, "1": {"ERRORED": 1}}
    assert counts.of_layer(summed, "j.0") == {"RUNNING": 5, "COMPLETED": 2, "ERRORED": 0, "SKIPPED": 0}
    assert counts.of_job(summed) == {"RUNNING": 5, "COMPLETED": 2, "ERRORED": 1, "SKIPPED": 0}


def _claim_all(client: Client, claims: Claims, lease: int) -> list:
    ready = tasks_in(client.store, client.keys, "QUEUED")
    held = []
    for start in range(0, len(ready), 16):
        got, _ = claims.claim(ready[start:start + 16], lease)
        held += got
    return held


def test_finishes_count_in_one_key_per_writer_and_a_retry_counts_down(client: Client):
    store, keys = client.store, client.keys
    job = client.board.post(spec.validate_job({"name": "c", "layers": [{"tasks": [{"cmd": ["true"]}] * 20}]}), "u")
    claims = Claims(store, keys, "n")
    lease = live_lease(store, keys, 30)
    held = _claim_all(client, claims, lease)
    assert len(held) == 20 and client.counts(job)["running"] == 20, "claims count RUNNING in the claim loop's key"
    for start in range(0, 20, 5):  # four finish transactions, one counter key
        committed, lost = claims.finish([(c, Outcome(Cause.EXIT, "exit 0", 0)) for c in held[start:start + 5]],
                                        writer="w1")
        assert len(committed) == 5 and not lost
    assert [kv.key.rsplit("/", 1)[1] for kv in store.scan(keys.count("u", job))[0]] == [f"{lease:016x}c", "w1"]
    assert client.counts(job)["completed"] == 20 and client.counts(job)["running"] == 0

    # someone else wrote the writer's key meanwhile: the finish reads it again, and counts right
    failing = {"name": "d", "layers": [{"tasks": [{"cmd": ["false"], "max_attempts": 1}] * 2}]}
    job2 = client.board.post(spec.validate_job(failing), "u")
    held = _claim_all(client, claims, live_lease(store, keys, 30))
    claims.finish([(held[0], Outcome(Cause.EXIT, "exit 1", 1))], writer="w1")
    store.put(keys.count("u", job2, "w1"), codec.pack({"0": {"SKIPPED": 1}}))
    claims.finish([(held[1], Outcome(Cause.EXIT, "exit 0", 0))], writer="w1")
    assert client.counts(job2)["skipped"] == 1 and client.counts(job2)["completed"] == 1

    client.retry(f"{job}.0.3")  # a user's action: a key of its own, -1
    assert client.counts(job)["completed"] == 19 and client.counts(job)["queued"] == 1
    assert store.count(keys.count("u", job)) == 3


def test_a_fenced_out_finish_counts_nothing(client: Client):
    store, keys = client.store, client.keys
    job = client.board.post(spec.validate_job({"name": "f", "layers": [{"tasks": [{"cmd": ["true"]}]}]}), "u")
    lease = live_lease(store, keys, 30)
    claims = Claims(store, keys, "n")
    [held] = _claim_all(client, claims, lease)
    store.revoke(lease)
    committed, lost = claims.finish([(held, Outcome(Cause.EXIT, "exit 0", 0))], writer="w")
    assert committed == [] and len(lost) == 1
    assert store.count(keys.count("u", job)) == 1, "only the claim's"
    assert client.counts(job)["completed"] == 0 and client.counts(job)["running"] == 1, "an orphan until recovered"
