"""Reads of a big job cost a bounded number of keys whatever its size (issue 13): ``Client.show``
(a page of 100 by default), ``Client.job``, the job list, ``conductor show``, the API and the web
job page. Counted, not timed: keys by a counting subclass of the real Store, and for the other
processes the bytes etcd sent to its clients (etcd's own /metrics on an etcd of this test's own)."""
from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from conductor import codec, views
from conductor.board import UNSTORED_DEFAULTS
from conductor.client import Client
from conductor.store import Store
from harness import EtcdServer, conductor_cli, tasks_in
from webserver import WebServer

TASKS = 3000  # queued, with no task key yet: 3000 specs of ~1 KB in ~15 chunks, some 3 MB in all
BOUNDED_KEYS = 400  # what one view may read: pages, layers, samples; far below the job's tasks
BOUNDED_BYTES = 600_000  # what etcd may send for one view of it (a page's chunks), out of the job's ~3 MB
NOTE = "n" * 1000  # each task's own env: what makes the chunks, and a whole read, big


class CountingStore(Store):
    """The real Store, counting the keys its answers carried (ranges and ranges in transactions)."""

    keys_read = 0

    def _call(self, fn: Any, request: Any, what: str, *args: Any, **kwargs: Any) -> Any:
        resp = super()._call(fn, request, what, *args, **kwargs)
        if hasattr(resp, "kvs"):
            self.keys_read += len(resp.kvs)
        for r in getattr(resp, "responses", ()):
            if r.WhichOneof("response") == "response_range":
                self.keys_read += len(r.response_range.kvs)
        return resp

    def reads(self, call: Any) -> tuple[int, Any]:
        before = self.keys_read
        out = call()
        return self.keys_read - before, out


@pytest.fixture
def big(etcd: EtcdServer, namespace: str) -> Iterator[tuple[Client, CountingStore, str]]:
    """A client on a counting store, and a job whose first layer's 3000 tasks are queued (no node
    runs them, so every one is QUEUED)."""
    store = CountingStore(etcd.endpoint)
    client = Client(namespace=namespace, user="tester", store=store)
    job = client.post({"name": "big", "layers": [
        {"name": "wide", "tasks": [{"name": f"t{n}", "cmd": ["true"], "env": {"NOTE": NOTE}} for n in range(TASKS)]},
        {"name": "after", "tasks": [{"cmd": ["true"]}]}]})
    assert len(tasks_in(store, client.keys, "QUEUED", "tester", job + ".0.")) == TASKS
    yield client, store, job
    client.close()


def test_show_job_and_list_read_a_bounded_number_of_keys(big):
    client, store, job = big
    keys, tree = store.reads(lambda: client.show(job))
    wide = tree["layer_list"][0]
    assert len(wide["task_list"]) == views.SHOW_TASKS == 100 and wide["more"] == TASKS - 100
    assert wide["counts"]["queued"] == TASKS and tree["counts"]["total"] == TASKS + 1
    assert wide["waiting"] and tree["waiting"], "why it waits, judged from a sample of its tasks"
    assert keys <= BOUNDED_KEYS, f"show read {keys} keys"
    keys, layer = store.reads(lambda: client.show(f"{job}.0"))
    assert len(layer["task_list"]) == 100 and keys <= BOUNDED_KEYS, f"show of the layer read {keys} keys"
    keys, found = store.reads(lambda: client.job(job))
    assert found["tasks"] == TASKS + 1 and keys <= 5, f"job read {keys} keys"
    keys, listed = store.reads(client.jobs)
    assert listed[0]["counts"]["queued"] == TASKS and keys <= 5, f"the list read {keys} keys"
    keys, _ = store.reads(lambda: client.counts(job))
    assert keys <= 5, f"counts read {keys} keys"
    keys, everything = store.reads(lambda: client.show(job, tasks=0))  # asked for: every task (in its chunks)
    assert len(everything["layer_list"][0]["task_list"]) == TASKS and keys >= store.count(client.keys.chunks("tester"))


def _sent_bytes(etcd: EtcdServer) -> float:
    """What etcd has sent to its gRPC clients, from its own /metrics."""
    with urllib.request.urlopen(f"{etcd.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(m) for m in re.findall(r"^etcd_network_client_grpc_sent_bytes_total(?:\{[^}]*\})? (\S+)$",
                                             text, re.M))


def test_cli_api_and_web_page_read_a_bounded_share_of_a_big_job(big, etcd, namespace, tmp_path: Path):
    client, _, job = big
    every = _sent_bytes(etcd)
    client.show(job, tasks=0)
    whole = _sent_bytes(etcd) - every
    assert whole > 4 * BOUNDED_BYTES, f"the whole job is {whole:.0f} bytes: the bound must be well below it"

    common = ["--etcd", etcd.endpoint, "--namespace", namespace, "--user", "tester"]
    before = _sent_bytes(etcd)
    run = conductor_cli("show", job, "--json", *common)
    assert run.returncode == 0, run.stderr
    sent = _sent_bytes(etcd) - before
    assert sent < BOUNDED_BYTES, f"conductor show made etcd send {sent:.0f} bytes"

    web = WebServer(etcd.endpoint, namespace, tmp_path, env={"CONDUCTOR_USER": "tester"}).start()
    try:
        with web.http() as http:
            for path in (f"/api/v1/jobs/{job}", f"/api/v1/layers/{job}.0", "/api/v1/jobs", f"/ui/jobs/{job}"):
                before = _sent_bytes(etcd)
                resp = http.get(path)
                assert resp.status_code == 200, (path, resp.text[:300])
                sent = _sent_bytes(etcd) - before
                assert sent < BOUNDED_BYTES, f"GET {path} made etcd send {sent:.0f} bytes"
    finally:
        web.stop()


def test_post_leaves_default_fields_out_and_views_put_them_back(client: Client):
    job = client.post({"name": "lean", "layers": [{"tasks": [{"cmd": ["true"]},
                                                             {"cmd": ["env"], "env": {"A": "1"}, "priority": 3}]}]})
    [chunk] = client.store.scan(client.keys.chunk("tester", f"{job}.0"))[0]
    stored = codec.unpack(chunk.value)["specs"]
    assert stored == [{"cmd": ["true"]}, {"cmd": ["env"], "env": {"A": "1"}, "priority": 3}], \
        "a chunk holds what each task has that a fresh one has not"
    shown = client.task(f"{job}.0.0")
    assert {name: shown[name] for name in UNSTORED_DEFAULTS} == UNSTORED_DEFAULTS
    other = client.show(job)["layer_list"][0]["task_list"][1]
    assert other["env"] == {"A": "1"} and other["priority"] == 3 and other["shell"] is False
