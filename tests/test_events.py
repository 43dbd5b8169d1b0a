"""``conductor events``: transitions as JSON lines from etcd's watches, resumable by revision.

The rules that turn a watch event into records are pure and tested without etcd; the follow tests
run real etcd, real conductor processes and the real command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any


from conductor import codec, model
from conductor.events import Filter, line, select, transitions
from conductor.keys import Keys
from conductor.ops import KV, Event
from harness import conductor_cli, wait_for

K = Keys("/ns/")
JOB = "01m81wxf1dswg224"


# ---- the pure rules -------------------------------------------------------------------------------


def kv(key: str, value: dict[str, Any] | None, rev: int, version: int = 1) -> KV:
    return KV(K.namespace + key, codec.pack(value) if value is not None else b"", 1, rev, version)


def task(state: str, *moves: tuple[str, str]) -> dict[str, Any]:
    value = {"kind": "task", "id": f"{JOB}.0.0", "job": JOB, "user": "ann", "state": "PENDING", "records": []}
    for new, reason in moves:
        model.move(value, new, reason, "n1", at=5.0)
    assert value["state"] == state
    return value


def test_a_put_that_adds_records_makes_one_transition_per_record() -> None:
    before = task("QUEUED", ("QUEUED", "its layer started"))
    after = task("QUEUED", ("QUEUED", "its layer started"), ("RUNNING", "claimed"), ("QUEUED", "exit 3"))
    ev = Event("put", kv(f"q/u/ann/tasks/{JOB}.0.0", after, 7, 3), kv(f"q/u/ann/tasks/{JOB}.0.0", before, 6, 2))
    got = transitions(K, ev)
    assert [(r["from"], r["state"], r["reason"]) for r in got] == [("QUEUED", "RUNNING", "claimed"),
                                                                   ("RUNNING", "QUEUED", "exit 3")]
    assert all(r["rev"] == 7 and r["kind"] == "task" and r["user"] == "ann" and r["job"] == JOB and
               r["node"] == "n1" and r["at"] == 5.0 for r in got)


def test_a_put_without_a_new_record_is_no_transition() -> None:
    value = task("RUNNING", ("QUEUED", "l"), ("RUNNING", "c"))
    pushed = {**value, "usage": {"cpu": 1}}
    ev = Event("put", kv(f"q/u/ann/tasks/{JOB}.0.0", pushed, 9, 4), kv(f"q/u/ann/tasks/{JOB}.0.0", value, 8, 3))
    assert transitions(K, ev) == []


def test_trimmed_history_still_counts_the_added_records() -> None:
    value = task("QUEUED", *[(s, "r") for s in ["QUEUED", "RUNNING"] * 20], ("QUEUED", "r"))
    assert len(value["records"]) == model.MAX_RECORDS and value["records_dropped"] == 1
    after = model.move(codec.unpack(codec.pack(value)), "RUNNING", "claimed again", "n2", at=6.0)
    ev = Event("put", kv(f"q/u/ann/tasks/{JOB}.0.0", after, 9, 50), kv(f"q/u/ann/tasks/{JOB}.0.0", value, 8, 49))
    [rec] = transitions(K, ev)
    assert (rec["from"], rec["state"], rec["reason"], rec["node"]) == ("QUEUED", "RUNNING", "claimed again", "n2")


def test_creation_deletion_nodes_and_fires() -> None:
    layer = {"kind": "layer", "id": f"{JOB}.0", "state": "PENDING", "records": []}
    [born] = transitions(K, Event("put", kv(f"q/u/ann/layers/{JOB}.0", layer, 3)))
    assert (born["kind"], born["id"], born["from"], born["state"]) == ("layer", f"{JOB}.0", None, "PENDING")
    job = model.new_job(JOB, {"name": "j", "layers": []}, "ann", {"kind": "api"})
    [posted] = transitions(K, Event("put", kv(f"q/u/ann/jobs/{JOB}", job, 3)))
    assert (posted["state"], posted["reason"]) == ("PENDING", "posted by ann")
    gone = Event("delete", kv(f"q/u/ann/jobs/{JOB}", None, 20), kv(f"q/u/ann/jobs/{JOB}", job, 4, 2))
    assert [(r["from"], r["state"]) for r in transitions(K, gone)] == [("PENDING", "removed")]
    node = {"name": "n1", "started": 1.5}
    assert [r["state"] for r in transitions(K, Event("put", kv("nodes/n1", node, 4)))] == ["joined"]
    assert transitions(K, Event("put", kv("nodes/n1", node, 5, 2), kv("nodes/n1", node, 4))) == []
    assert [r["state"] for r in transitions(K, Event("delete", kv("nodes/n1", None, 6)))] == ["left"]
    firing = {"state": "firing", "job": JOB, "node": "n1", "at": 1.0, "tick": 60}
    [fired] = transitions(K, Event("put", kv("fires/ann/s/000000000060", firing, 7)))
    assert (fired["kind"], fired["id"], fired["state"], fired["job"]) == ("fire", "s/000000000060", "firing", JOB)
    done = Event("put", kv("fires/ann/s/000000000060", {**firing, "state": "posted", "done": 2.0}, 8, 2),
                 kv("fires/ann/s/000000000060", firing, 7))
    assert [(r["from"], r["state"], r["at"]) for r in transitions(K, done)] == [("firing", "posted", 2.0)]
    for other in ("q/claims/x", "q/kills/ann/x", "q/alive/00000000000000aa", f"users/ann/logs/{JOB}.0.0", "index/x",
                  "nodes/", f"users/ann/counts/{JOB}/a1"):
        assert transitions(K, Event("put", kv(other, {"a": 1}, 9))) == []
    assert transitions(K, Event("put", KV(K.namespace + "nodes/n9", b"\xc1not msgpack", 1, 9, 1))) == []


def test_filter_by_user_and_by_id() -> None:
    def put(key: str, value: dict[str, Any]) -> Event:
        return Event("put", kv(key, value, 3))

    evs = [put(f"q/u/ann/layers/{JOB}.0", {"state": "PENDING"}), put(f"q/u/bob/tasks/{JOB}x.0.0", {"state": "PENDING"}),
           put(f"q/u/ann/tasks/{JOB}.1.0", {"state": "PENDING"}), put("nodes/n1", {"name": "n1"})]
    assert [r["id"] for r in select(K, evs, Filter(user="ann"))] == [f"{JOB}.0", f"{JOB}.1.0", "n1"]
    assert len(select(K, evs, Filter())) == 4
    assert [r["id"] for r in select(K, evs, Filter(ids=[f"{JOB}.1"]))] == [f"{JOB}.1.0"]
    assert [r["id"] for r in select(K, evs, Filter(ids=[JOB]))] == [f"{JOB}.0", f"{JOB}.1.0"]
    assert line(select(K, evs, Filter(ids=[JOB]))[0]).split() == ["3", "layer", f"{JOB}.0", "PENDING"]


# ---- following real etcd and real conductors -------------------------------------------------------


class Reader:
    """A running ``conductor events --json``: its lines, read in a thread of the test's own."""

    def __init__(self, endpoint: str, namespace: str, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "conductor", "events", "--json", "--etcd", endpoint,
                                      "--namespace", namespace, "--user", "tester", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.records: list[dict[str, Any]] = []
        self.started = ""
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        assert self.proc.stderr is not None
        self.started = self.proc.stderr.readline()  # said before the watch opens: nothing after it is missed
        assert "following transitions from etcd revision" in self.started, self.started

    def _read(self, out: IO[str]) -> None:
        for text in out:
            self.records.append(json.loads(text))

    def saw(self, kind: str, some_id: str, state: str) -> bool:
        return any(r["kind"] == kind and r["id"] == some_id and r["state"] == state for r in self.records)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def two_layers(tmp: Path, name: str) -> dict[str, Any]:
    return {"name": name, "layers": [{"tasks": [{"cmd": ["true"]}, {"cmd": ["sh", "-c", "exit 0"]}]},
                                     {"tasks": [{"cmd": ["true"]}]}]}


def history(client: Any, job: str) -> dict[str, list[str]]:
    """Every object's states as etcd tells them: the value as created (its state when it was born
    without a record: the first layer and its tasks are born started), then its stored records."""
    out = {}
    for kind in ("jobs", "layers", "tasks"):
        prefix = f"{client.keys.namespace}q/u/tester/{kind}/{job}"
        for kv in client.store.scan(prefix)[0]:
            born = codec.unpack(client.store.range(kv.key, revision=kv.create_revision).kvs[0].value)
            records = codec.unpack(kv.value)["records"]
            out[kv.key.rsplit("/", 1)[1]] = ([] if born["records"] else [born["state"]]) + [r["state"] for r in records]
    return out


def seen(records: list[dict[str, Any]], job: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in records:
        if r["kind"] in ("job", "layer", "task") and r["id"].split(".")[0] == job:
            chain = out.setdefault(r["id"], [])
            assert r["from"] == (chain[-1] if chain else None), f"{r} does not follow {chain}"
            chain.append(r["state"])
    return out


def test_events_follow_a_job_from_post_to_end_and_resume_without_gap(client, shared_etcd, start_nodes, tmp_path):
    ns = client.keys.namespace
    start_nodes(shared_etcd.endpoint, 1)
    everything: list[dict[str, Any]] = []
    stop = threading.Event()
    api = threading.Thread(target=client.events, args=(everything.extend,), kwargs={"stop": stop}, daemon=True)
    api.start()  # the Python API, followed without a break, is the reference for the resumed command
    first = Reader(shared_etcd.endpoint, ns)
    job = client.post(two_layers(tmp_path, "one"))
    assert client.wait(job, timeout=60)["state"] == "COMPLETED"
    wait_for(lambda: first.saw("job", job, "COMPLETED"), 20, what="the reader saw the job end")
    expected = history(client, job)
    assert seen(first.records, job) == expected, "every transition once, in order"
    revs = [r["rev"] for r in first.records]
    assert revs == sorted(revs)
    assert all(r["user"] == "tester" for r in first.records if r["kind"] != "node")
    first.stop()

    last = first.records[-1]["rev"]
    second_job = client.post(two_layers(tmp_path, "two"))  # while nobody reads the command's stream
    assert client.wait(second_job, timeout=60)["state"] == "COMPLETED"
    resumed = Reader(shared_etcd.endpoint, ns, "--since", str(last + 1))
    assert f"revision {last + 1} " in resumed.started
    wait_for(lambda: resumed.saw("job", second_job, "COMPLETED"), 20, what="the resumed reader caught up")
    assert seen(resumed.records, second_job) == history(client, second_job)
    wait_for(lambda: any(r["id"] == second_job and r["state"] == "COMPLETED" for r in everything), 20)
    stop.set()
    api.join(10)
    assert not api.is_alive(), "Client.events returns once stop is set"
    key = lambda r: (r["rev"], r["kind"], r["id"], r["state"], r["reason"])  # noqa: E731
    joined = [key(r) for r in first.records + resumed.records]
    assert len(joined) == len(set(joined)), "no record twice"
    reference = [key(r) for r in everything if r["rev"] <= resumed.records[-1]["rev"]]
    assert joined == reference, "the stopped and resumed command saw exactly what a reader that never stopped saw"
    resumed.stop()


def test_ids_filter_and_bad_input(client, shared_etcd, tmp_path):
    ns = client.keys.namespace
    since = client.store.revision() + 1
    job = client.post({**two_layers(tmp_path, "idle"), "paused": True})
    other = client.post(two_layers(tmp_path, "other"))
    client.pause(other)  # transitions of another job, which the filter must leave out
    client.pause(f"{job}.0")  # a record on the layer (paused), which it must keep
    reader = Reader(shared_etcd.endpoint, ns, "--since", str(since), f"{job}.0")
    wait_for(lambda: any((r["reason"] or "").startswith("paused by") for r in reader.records), 20,
             what="the layer's history was replayed up to its pause")
    reader.stop()
    # its tasks never ran nor were changed: they have no key yet, so no transition (conductor/chunks.py)
    assert {r["id"] for r in reader.records} == {f"{job}.0"}
    assert [r["reason"] for r in reader.records if r["id"] == f"{job}.0"][-1].startswith("paused by")
    for args, word in ((["--since", "0"], "--since"), (["nosuchjob!"], "id")):
        run = conductor_cli("events", *args, "--etcd", shared_etcd.endpoint, "--namespace", ns, "--user", "tester")
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith("error: ") and word in run.stderr and "Traceback" not in run.stderr


def test_a_compacted_since_is_said_in_one_line(etcd):
    from conductor.client import Client

    with Client(etcd=etcd.endpoint, namespace="/c/", user="tester") as c:
        c.post({"name": "x", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
        c.store.compact(c.store.revision())
    run = conductor_cli("events", "--since", "1", "--etcd", etcd.endpoint, "--namespace", "/c/", timeout=30)
    assert run.returncode == 4, run.stderr
    lines = [t for t in run.stderr.splitlines() if t.startswith("error")]
    assert len(lines) == 1 and "revision 1 is compacted" in lines[0], run.stderr
    assert run.stdout == ""


def test_the_python_follower_rides_out_an_etcd_restart(etcd):
    """etcd restarted under a follower: it watches again from the revision after the last it
    delivered, so the job posted after the restart shows up and nothing before it repeats."""
    from conductor.client import Client

    got: list[dict[str, Any]] = []
    stop = threading.Event()
    with Client(etcd=etcd.endpoint, namespace="/r/", user="tester") as c:
        began = threading.Event()
        follower = threading.Thread(target=c.events, args=(got.extend,),
                                    kwargs={"stop": stop, "started": lambda rev: began.set()}, daemon=True)
        follower.start()
        assert began.wait(10)
        before = c.post({"name": "a", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
        wait_for(lambda: any(r["id"] == before for r in got), 10, what="the first job was seen")
        etcd.restart()
        after = c.post({"name": "b", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
        wait_for(lambda: any(r["id"] == after and r["kind"] == "job" for r in got), 30, what="seen after the restart")
        stop.set()
        follower.join(10)
        assert not follower.is_alive()
    keys = [(r["rev"], r["id"], r["state"], r["reason"]) for r in got]
    assert len(keys) == len(set(keys)) and [k[0] for k in keys] == sorted(k[0] for k in keys)
