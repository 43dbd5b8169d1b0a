"""Client.wait: what it follows (conductor/jobwatch.py), as pure rules and against real nodes."""
from __future__ import annotations

from typing import Any

import pytest

from conductor import codec, ids
from conductor.client import Client
from conductor.errors import NotFound
from conductor.jobwatch import JOB, TALLY, JobWatch, NeverSeen, wait_for_end
from conductor.ops import KV, Event

COUNT_PREFIX = "/ns/users/u/counts/j/"


def kv(key: str, revision: int, value: bytes = b"") -> KV:
    return KV(key, value, revision, revision, 1)


def job_kv(state: str, revision: int, tasks: int = 3) -> KV:
    return kv("/ns/q/u/u/jobs/j", revision, codec.pack({"id": "j", "state": state, "tasks": tasks}))


def tallies(revision: int, *tasks: str) -> list[KV]:
    """Counter keys (conductor/counts.py) that count ``tasks`` COMPLETED: one writer per task."""
    return [kv(f"{COUNT_PREFIX}w{t}", revision, codec.pack({"0": {"COMPLETED": 1}})) for t in tasks]


def test_the_last_progress_call_counts_every_tally_when_the_tally_watch_lags():
    """The job's watch saw it COMPLETED at revision 10; the tally watch (another stream) is still at
    revision 6 with 2 of 3 tallies. wait reads the tallies once and its last call counts all 3."""
    watch = JobWatch(2)
    watch.job_handler().reset([job_kv("COMPLETED", 10)], 10)
    tally = watch.tally_handler()
    tally.reset(tallies(6, "j.0.0", "j.0.1"), 6)
    reads: list[int] = []
    calls: list[dict[str, int]] = []

    def read(slot: int) -> tuple[list[KV], int]:
        reads.append(slot)
        return tallies(11, "j.0.0", "j.0.1", "j.0.2"), 11

    job = wait_for_end(watch, "j", 5, lambda j, counts: calls.append(counts), read)
    assert job["state"] == "COMPLETED"
    assert reads == [TALLY]
    assert calls[-1]["done"] == calls[-1]["total"] == 3
    # an event older than the read, delivered late by the tally watch, does not undo it
    tally.events([Event("delete", kv(f"{COUNT_PREFIX}wj.0.2", 8))], 8)
    assert watch.counts()["done"] == 3


def test_no_read_when_every_view_is_at_the_end():
    watch = JobWatch(2)
    watch.job_handler().reset([job_kv("ERRORED", 10)], 12)
    watch.tally_handler().reset(tallies(12, "j.0.0"), 12)

    def read(slot: int) -> tuple[list[KV], int]:
        raise AssertionError(f"no read was needed (slot {slot})")

    assert wait_for_end(watch, "j", 5, lambda j, c: None, read)["state"] == "ERRORED"


def test_without_progress_only_the_job_is_followed():
    watch = JobWatch(1)
    watch.job_handler().reset([job_kv("RUNNING", 4)], 4)
    watch.job_handler().events([Event("put", job_kv("COMPLETED", 9))], 9)
    assert watch.behind() == [] and watch.ended()
    assert wait_for_end(watch, "j", 5, None, lambda slot: ([], 0))["state"] == "COMPLETED"
    assert (JOB, TALLY) == (0, 1)


def test_wait_with_progress_ends_with_every_task_counted(client: Client, shared_etcd: Any, start_nodes: Any):
    start_nodes(shared_etcd.endpoint, 2, slots=4)
    job = client.post({"name": "counted", "layers": [{"tasks": [{"cmd": ["true"]} for _ in range(12)]}]})
    calls: list[dict[str, int]] = []
    done = client.wait(job, timeout=60, on_progress=lambda j, counts: calls.append(counts))
    assert done["state"] == "COMPLETED"
    assert calls[-1]["done"] == calls[-1]["total"] == 12 and calls[-1]["running"] == 0
    assert client.wait(job, timeout=10)["state"] == "COMPLETED"  # an ended job: at once, one watch


def test_a_job_never_listed_is_told_apart_from_one_removed():
    """Client.wait follows a full id among the caller's own jobs first and looks further only when
    the first listing had no such job (NeverSeen); a job seen and then gone is a plain NotFound."""
    never = JobWatch(1)
    never.job_handler().reset([], 5)
    with pytest.raises(NeverSeen):
        wait_for_end(never, "j", 5, None, lambda slot: ([], 0))
    removed = JobWatch(1)
    removed.job_handler().reset([job_kv("RUNNING", 4)], 4)
    removed.job_handler().reset([], 9)  # listed again after a broken watch: gone meanwhile
    with pytest.raises(NotFound) as caught:
        wait_for_end(removed, "j", 5, None, lambda slot: ([], 0))
    assert not isinstance(caught.value, NeverSeen)


def test_wait_by_full_id_finds_another_users_job_and_refuses_an_unknown_one(
        client: Client, shared_etcd: Any, namespace: str, start_nodes: Any):
    start_nodes(shared_etcd.endpoint, 1)
    with Client(etcd=shared_etcd.endpoint, namespace=namespace, user="someone-else") as other:
        job = other.post({"name": "theirs", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
        assert len(job) == ids.JOB_ID_LEN
        assert client.wait(job, timeout=60)["state"] == "COMPLETED"  # not the caller's: located, then followed
        assert other.wait(job, timeout=10)["state"] == "COMPLETED"  # the owner's own: followed at once
    unknown = ids.new_job_id()
    with pytest.raises(NotFound, match=f"no job {unknown}"):
        client.wait(unknown, timeout=10)
