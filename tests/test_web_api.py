"""The JSON HTTP API against a real ``conductor serve`` (uvicorn, loopback port) over real etcd:
every endpoint, its errors (404, 409, 412, 400/422 with nothing written), /openapi.json, /healthz,
etcd auth through HTTP Basic, and a node serving on a port already taken."""
from __future__ import annotations

import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conductor.client import Client
from conductor.web.app import make_app
from conductor.web.context import WebSettings
from harness import EtcdServer, free_port, namespace_writes, wait_for
from webserver import WebServer

JOB = {"name": "webjob", "layers": [{"name": "first", "tasks": [{"cmd": ["true"]}, {"cmd": ["true"]}]},
                                    {"name": "second", "tasks": [{"cmd": ["true"]}]}]}
YAML_JOB = "name: yamljob\nlayers:\n  - tasks:\n      - cmd: [echo, hi]\n"


@pytest.fixture
def server(shared_etcd: EtcdServer, namespace: str, tmp_path: Path) -> Iterator[WebServer]:
    web = WebServer(shared_etcd.endpoint, namespace, tmp_path, env={"CONDUCTOR_USER": "tester"}).start()
    yield web
    web.stop()


@pytest.fixture
def http(server: WebServer) -> Iterator[httpx.Client]:
    with server.http() as c:
        yield c


def keys_in(client: Client) -> list[tuple[str, int]]:
    """The namespace's keys with their last writes: unchanged means nothing was written."""
    return namespace_writes(client.store, client.keys.namespace)


def etag_of(response: httpx.Response) -> str:
    return response.headers["etag"].strip('"')


# ---- the description --------------------------------------------------------------------------------------


def test_openapi_describes_every_route(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    app = make_app(WebSettings(etcd=["127.0.0.1:1"]))  # the same routes, read without serving them
    served = set()
    for route in app.routes:
        for sub in getattr(route, "routes", None) or [route]:
            path = getattr(route, "path", "") + sub.path if sub is not route else route.path
            served |= {(path, m) for m in (getattr(sub, "methods", None) or ()) if m != "HEAD"}  # (a Mount has none)
    api = {r for r in served if r[0].startswith("/api/") or r[0] in ("/metrics", "/healthz", "/openapi.json")}
    assert len(api) > 40 and api <= described, sorted(api - described)
    kill = spec["paths"]["/api/v1/tasks/{id}/kill"]["post"]
    assert "412" in {str(s) for s in kill["responses"]} and kill["operationId"] == "kill_task"


# ---- reading and posting ------------------------------------------------------------------------------------


def test_post_list_show_and_nodes(http: httpx.Client, client: Client) -> None:
    posted = http.post("/api/v1/jobs", json=JOB)
    assert posted.status_code == 201, posted.text
    job_id = posted.json()["id"]
    assert posted.headers["location"] == f"/api/v1/jobs/{job_id}"
    yaml_post = http.post("/api/v1/jobs?paused=1", content=YAML_JOB, headers={"Content-Type": "application/yaml"})
    assert yaml_post.status_code == 201, yaml_post.text
    assert client.job(yaml_post.json()["id"])["paused_at"]
    listed = http.get("/api/v1/jobs").json()
    assert [j["name"] for j in listed] == ["yamljob", "webjob"] and all(j["user"] == "tester" for j in listed)
    assert [j["name"] for j in http.get("/api/v1/jobs", params={"name": "web"}).json()] == ["webjob"]
    assert len(http.get("/api/v1/jobs", params={"limit": 1}).json()) == 1
    assert http.get("/api/v1/jobs", params={"state": "COMPLETED"}).json() == []
    assert http.get("/api/v1/jobs", params={"user": "nobody"}).json() == []
    assert len(http.get("/api/v1/jobs", params={"all_users": "1"}).json()) == 2
    job = http.get(f"/api/v1/jobs/{job_id}", params={"tasks": 1})
    assert job.status_code == 200 and job.json()["kind"] == "job"
    assert etag_of(job) == str(job.json()["etag"]) == str(client.job(job_id)["etag"])
    first = job.json()["layer_list"][0]
    assert len(first["task_list"]) == 1 and first["more"] == 1  # paged
    page2 = http.get(f"/api/v1/layers/{job_id}.0", params={"tasks": 1, "after": first["next"]}).json()
    assert page2["kind"] == "layer" and [t["id"] for t in page2["task_list"]] == [f"{job_id}.0.1"]
    task = http.get("/api/v1/tasks/webjob.0.0")  # a job name resolves, as in the CLI
    assert task.json()["id"] == f"{job_id}.0.0" and task.json()["state"] == "QUEUED" and task.headers["etag"]
    assert http.get("/api/v1/nodes").json() == []
    etcd = http.get("/api/v1/cluster").json()
    assert etcd["alarms"] == [] and [m["healthy"] for m in etcd["members"]] == [True]


def test_not_found_and_validation_write_nothing(http: httpx.Client, client: Client) -> None:
    job_id = http.post("/api/v1/jobs", json=JOB).json()["id"]
    before = keys_in(client)
    for path in ("/api/v1/jobs/nosuchjob", "/api/v1/jobs/zzzzzzzzzzzzzzzz", f"/api/v1/tasks/{job_id}.0.9",
                 f"/api/v1/layers/{job_id}.0.0", f"/api/v1/tasks/{job_id}.0.0/result", "/api/v1/templates/none",
                 "/api/v1/schedules/none", "/api/v1/no-such-route"):
        answer = http.get(path)
        assert answer.status_code == 404, (path, answer.text)
        assert set(answer.json()) >= {"error", "field", "object"}
    assert http.post(f"/api/v1/tasks/{job_id}.0.9/kill").status_code == 404
    bad = http.post("/api/v1/jobs", json={"name": "x", "layers": [{"tasks": [{"cmd": []}]}]})
    assert bad.status_code == 422 and bad.json()["field"].startswith("layers[0].tasks[0]"), bad.text
    assert http.post("/api/v1/jobs", json={"name": "x"}).json()["field"] == "layers"
    not_json = http.post("/api/v1/jobs", content=b"{oops", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["field"] == "body"
    assert http.post("/api/v1/jobs", content=b"").status_code == 400
    assert http.post("/api/v1/jobs", json=[1, 2]).status_code == 422
    assert http.get("/api/v1/jobs", params={"limit": "many"}).json()["field"] == "limit"
    assert http.post("/api/v1/jobs?paused=maybe", json=JOB).status_code == 400
    assert http.post(f"/api/v1/jobs/{job_id}/pause", headers={"If-Match": "yesterday"}).status_code == 400
    assert http.post(f"/api/v1/jobs/{job_id}/kill", json={"grace": "soon"}).status_code == 422
    assert http.post("/api/v1/schedules", json={"name": "s", "cron": "not a rule", "template": "t"}).status_code in (
        404, 422)
    assert http.post("/api/v1/schedules", json={"name": "s"}).json()["field"] == "cron"
    assert http.post("/api/v1/templates", json={"name": "t"}).status_code == 422
    assert http.patch(f"/api/v1/jobs/{job_id}/env", json={"A": [1]}).status_code == 400
    assert http.delete("/api/v1/jobs").status_code == 405
    assert keys_in(client) == before


# ---- steering -----------------------------------------------------------------------------------------------


def test_actions_take_etags_and_stale_ones_write_nothing(http: httpx.Client, client: Client) -> None:
    job_id = http.post("/api/v1/jobs", json=JOB).json()["id"]
    etag = etag_of(http.get(f"/api/v1/jobs/{job_id}"))
    paused = http.post(f"/api/v1/jobs/{job_id}/pause", headers={"If-Match": f'"{etag}"'})
    assert paused.status_code == 200 and paused.json()["done"] == "paused", paused.text
    assert etag_of(paused) == str(paused.json()["etag"]) != etag
    before = keys_in(client)
    stale = http.post(f"/api/v1/jobs/{job_id}/unpause", headers={"If-Match": f'"{etag}"'})
    assert stale.status_code == 412, stale.text
    assert stale.json()["etag"] == paused.json()["etag"] and etag_of(stale) == str(paused.json()["etag"])
    assert stale.json()["object"] == job_id
    assert keys_in(client) == before
    fresh = http.post(f"/api/v1/jobs/{job_id}/unpause", headers={"If-Match": etag_of(paused)})
    assert fresh.json()["done"] == "unpaused"
    task = f"{job_id}.0.0"
    assert http.post(f"/api/v1/tasks/{task}/retry").json()["done"] == "already QUEUED"
    started = http.post(f"/api/v1/layers/{job_id}.0/tasks", json=[{"cmd": ["true"]}])
    assert started.status_code == 409, started.text  # layer 0 has started
    added = http.post(f"/api/v1/layers/{job_id}.1/tasks", json={"tasks": [{"cmd": ["echo", "more"]}]})
    assert added.status_code == 201 and added.json()["ids"] == [f"{job_id}.1.1"], added.text
    killed = http.post(f"/api/v1/tasks/{task}/kill", json={"grace": 1})
    assert killed.status_code == 200, killed.text
    wait_for(lambda: client.task(task)["state"] == "ERRORED", 10, what="the killed task ERRORED")
    etag = etag_of(http.get(f"/api/v1/tasks/{task}"))
    assert http.post(f"/api/v1/tasks/{task}/retry", headers={"If-Match": str(int(etag) - 1)}).status_code == 412
    assert http.post(f"/api/v1/tasks/{task}/retry", headers={"If-Match": etag}).status_code == 200
    assert client.task(task)["state"] == "QUEUED"
    skipped = http.post(f"/api/v1/tasks/{job_id}.0.1/skip")
    assert skipped.status_code == 200 and client.task(f"{job_id}.0.1")["state"] == "SKIPPED"
    assert http.post(f"/api/v1/jobs/{job_id}.0/pause").status_code == 404  # a layer id on a job route


def test_env_and_results(http: httpx.Client, client: Client) -> None:
    job_id = http.post("/api/v1/jobs", json=JOB).json()["id"]
    assert http.get(f"/api/v1/jobs/{job_id}/env").json() == {}
    etag = etag_of(http.get(f"/api/v1/layers/{job_id}.1"))
    changed = http.patch(f"/api/v1/layers/{job_id}.1/env", json={"COLOUR": "blue", "N": 3}, headers={"If-Match": etag})
    assert changed.status_code == 200, changed.text
    assert http.get(f"/api/v1/layers/{job_id}.1/env").json() == {"COLOUR": "blue", "N": "3"}
    assert http.patch(f"/api/v1/layers/{job_id}.1/env", json={"X": "y"}, headers={"If-Match": etag}).status_code == 412
    http.patch(f"/api/v1/layers/{job_id}.1/env", json={"COLOUR": None})
    assert client.env(f"{job_id}.1") == {"N": "3"}
    task = f"{job_id}.0.0"
    put = http.put(f"/api/v1/tasks/{task}/result", content=b"\x00forty-two")
    assert put.status_code == 200, put.text
    got = http.get(f"/api/v1/tasks/{task}/result")
    assert got.content == b"\x00forty-two" and got.headers["content-type"] == "application/octet-stream"
    assert http.put(f"/api/v1/tasks/{task}/result", content=b"x", headers={"If-Match": "1"}).status_code == 412
    assert http.put(f"/api/v1/tasks/{task}/result", content=b"x" * (65 * 1024)).status_code == 409


# ---- templates, messages, schedules -------------------------------------------------------------------------

TEMPLATE = {"name": "greet", "inputs": {"who": {"default": "world"}}, "triggers": ["hello"],
            "layers": [{"tasks": [{"cmd": ["echo", "{who}"]}]}]}


def test_templates_messages_and_schedules(http: httpx.Client, client: Client) -> None:
    added = http.post("/api/v1/templates", json=TEMPLATE)
    assert added.status_code == 201, added.text
    assert http.post("/api/v1/templates", json=TEMPLATE).status_code == 409
    assert http.post("/api/v1/templates?replace=1", json=TEMPLATE).status_code == 201
    assert [t["name"] for t in http.get("/api/v1/templates").json()] == ["greet"]
    assert http.get("/api/v1/templates/greet").json()["name"] == "greet"
    posted = http.post("/api/v1/templates/greet/jobs?paused=1", json={"params": {"who": "ann"}})
    assert posted.status_code == 201, posted.text
    job = client.job(posted.json()["id"])
    assert job["paused_at"] and job["name"] == "greet"
    assert http.post("/api/v1/templates/greet/jobs", json={"params": {"nope": "x"}}).status_code == 422
    sent = http.post("/api/v1/messages/hello", json={"who": "bob"})
    assert sent.status_code == 200 and len(sent.json()["ids"]) == 1, sent.text
    assert http.post("/api/v1/messages/nobody-listens").json() == {"ids": []}
    schedule = {"name": "nightly", "cron": "0 3 * * *", "template": "greet", "params": {"who": "cron"}}
    made = http.post("/api/v1/schedules", json=schedule)
    assert made.status_code == 201, made.text
    assert http.post("/api/v1/schedules", json=schedule).status_code == 409
    assert [s["name"] for s in http.get("/api/v1/schedules").json()] == ["nightly"]
    assert http.post("/api/v1/schedules/nightly/pause").json()["done"] == "paused"
    assert http.get("/api/v1/schedules/nightly").json()["paused"]
    assert http.post("/api/v1/schedules/nightly/unpause").status_code == 200
    assert http.delete("/api/v1/schedules/nightly").status_code == 204
    assert http.get("/api/v1/schedules/nightly").status_code == 404
    assert http.delete("/api/v1/templates/greet").status_code == 204
    assert http.get("/api/v1/templates").json() == []


# ---- logs, events, health, with a node ----------------------------------------------------------------------

SLOW = {"name": "talker", "layers": [{"tasks": [{"cmd": ["sh", "-c", "echo one; sleep 1; echo two; sleep 1; echo three"]}]}]}


def sse_events(response: httpx.Response, until: str, limit: int = 200) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            out.append(json.loads(line[6:]))
            if out[-1].get("kind") == until or out[-1].get("state") == until or len(out) >= limit:
                break
    return out


def test_logs_follow_events_and_healthz_of_a_node(shared_etcd: EtcdServer, namespace: str, start_nodes: Any,
                                                   client: Client, tmp_path: Path) -> None:
    port = free_port()
    node = start_nodes(shared_etcd.endpoint, 1, extra=["--http", f"127.0.0.1:{port}"], env={"CONDUCTOR_USER": "tester"})[0]
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as http:
        wait_for(lambda: http.get("/healthz").status_code == 200, 30, 0.1, "the node's /healthz")
        assert http.get("/healthz").json()["node"] == node.name
        start_rev = client.store.revision() + 1
        with http.stream("GET", "/api/v1/events", headers={"Accept": "text/event-stream"}) as live:
            job_id = http.post("/api/v1/jobs", json=SLOW).json()["id"]
            task = f"{job_id}.0.0"
            with http.stream("GET", f"/api/v1/tasks/{task}/logs", params={"follow": 1},
                             headers={"Accept": "text/event-stream"}) as logs:
                got = sse_events(logs, "end")
            text = "".join(e.get("data", "") for e in got)
            assert "one" in text and "three" in text and got[-1]["kind"] == "end", got
            seen = sse_events(live, "COMPLETED")
        assert any(e["kind"] == "task" and e["state"] == "RUNNING" for e in seen), seen
        assert seen[-1]["state"] == "COMPLETED"
        assert http.get(f"/api/v1/tasks/{task}/logs").text.split() == ["one", "two", "three"]
        with http.stream("GET", f"/api/v1/tasks/{task}/logs?follow=1") as plain:  # ended: the tail, then the end
            assert plain.read().split() == [b"one", b"two", b"three"]
        with http.stream("GET", "/api/v1/events", params={"since": start_rev, "id": job_id}) as replay:
            again = sse_events(replay, "COMPLETED")
        assert [(e["id"], e["state"]) for e in again if e["kind"] == "job"] == \
            [(e["id"], e["state"]) for e in seen if e["kind"] == "job" and e["id"] == job_id]
        assert http.get("/api/v1/events", params={"since": 0}).status_code == 400
        assert http.get(f"/api/v1/tasks/{job_id}.0/logs", params={"follow": 1}).status_code == 404
        node.terminate()
        wait_for(lambda: not _answers(base), 15, 0.1, "the node's web server stops with it")


def _answers(base: str) -> bool:
    try:
        httpx.get(base + "/healthz", timeout=1)
        return True
    except httpx.HTTPError:
        return False


def test_healthz_without_a_node(shared_etcd: EtcdServer, namespace: str, tmp_path: Path) -> None:
    plain = WebServer(shared_etcd.endpoint, namespace, tmp_path).start()
    ghost = WebServer(shared_etcd.endpoint, namespace, tmp_path, extra=["--node", "ghost"]).start()
    cut_off = WebServer(f"127.0.0.1:{free_port()}", namespace, tmp_path).start()
    try:
        ok = httpx.get(plain.url + "/healthz").json()
        assert ok["ok"] and ok["etcd"] == "reachable"
        assert httpx.get(ghost.url + "/healthz").status_code == 503
        away = httpx.get(cut_off.url + "/healthz", timeout=30)
        assert away.status_code == 503 and "unreachable" in away.json()["reason"]
        assert httpx.get(cut_off.url + "/api/v1/jobs", timeout=30).status_code == 503
    finally:
        for web in (plain, ghost, cut_off):
            web.stop()


def test_a_port_in_use_does_not_stop_the_node(shared_etcd: EtcdServer, start_nodes: Any, client: Client) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        node = start_nodes(shared_etcd.endpoint, 1, extra=["--http", f"127.0.0.1:{port}"])[0]
        assert f"not serving HTTP: cannot listen on 127.0.0.1:{port}" in node.log()
        job = client.post({"name": "still", "layers": [{"tasks": [{"cmd": ["true"]}]}]})
        assert client.wait(job, timeout=30)["state"] == "COMPLETED"
    finally:
        taken.close()


# ---- etcd auth ------------------------------------------------------------------------------------------------

ROOT_PW = "root-secret"
NS = "/secure/"


def _etcdctl(server: EtcdServer, *args: str, root: bool = True) -> None:
    auth = ["--user", f"root:{ROOT_PW}"] if root else []
    done = subprocess.run(["etcdctl", "--endpoints", server.url, *auth, *args], capture_output=True, text=True,
                          env={**os.environ, "ETCDCTL_API": "3"}, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def auth_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """etcd with auth on: root; alice may use /secure/; bob only /elsewhere/."""
    server = EtcdServer(tmp_path / "etcd-auth" / "data", "auth").start()
    _etcdctl(server, "user", "add", f"root:{ROOT_PW}", root=False)
    _etcdctl(server, "user", "grant-role", "root", "root", root=False)
    for user, prefix in (("alice", NS), ("bob", "/elsewhere/")):
        _etcdctl(server, "role", "add", f"{user}-role", root=False)
        _etcdctl(server, "role", "grant-permission", f"{user}-role", "--prefix=true", "readwrite", prefix, root=False)
        _etcdctl(server, "user", "add", f"{user}:{user}-pw", root=False)
        _etcdctl(server, "user", "grant-role", user, f"{user}-role", root=False)
    _etcdctl(server, "auth", "enable", root=False)
    yield server
    server.stop()


def test_with_etcd_auth_requests_act_as_their_user(auth_etcd: EtcdServer, tmp_path: Path) -> None:
    web = WebServer(auth_etcd.endpoint, NS, tmp_path, env={"CONDUCTOR_USER": f"root:{ROOT_PW}"}).start()
    try:
        with web.http() as anonymous:
            refused = anonymous.get("/api/v1/jobs")
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
            assert anonymous.get("/healthz").status_code == 200  # health needs no login
        with web.http(auth=("alice", "wrong")) as wrong:
            assert wrong.get("/api/v1/jobs").status_code == 401
        with web.http(auth=("alice", "alice-pw")) as alice:
            assert alice.get("/api/v1/jobs").json() == []
            job_id = alice.post("/api/v1/jobs", json=JOB).json()["id"]
            assert alice.get(f"/api/v1/jobs/{job_id}").json()["user"] == "alice"
        with web.http(auth=("bob", "bob-pw")) as bob:
            assert bob.get("/api/v1/jobs").status_code == 403
        with Client(etcd=auth_etcd.endpoint, namespace=NS, credentials=_root()) as root:
            assert root.board.owner(job_id) == "alice"
        assert "alice-pw" not in web.log() and ROOT_PW not in web.log()
    finally:
        web.stop()


def _root() -> Any:
    from conductor.credentials import Credentials

    return Credentials(user="root", password=ROOT_PW)


def test_tls_serves_https(shared_etcd: EtcdServer, namespace: str, tmp_path: Path) -> None:
    from conductor import pki

    ca_cert, ca_key = pki.create_ca("web-test")
    key = pki.new_key()
    cert = pki.sign(ca_cert, ca_key, pki.make_csr(key, "localhost"), "localhost", ["127.0.0.1", "localhost"], server=True)
    for name, data in (("ca.pem", ca_cert), ("web.pem", cert), ("web.key", key)):
        (tmp_path / name).write_bytes(data)
    web = WebServer(shared_etcd.endpoint, namespace, tmp_path, scheme="https",
                    extra=["--http-cert", str(tmp_path / "web.pem"), "--http-key", str(tmp_path / "web.key")]).start()
    try:
        answer = httpx.get(web.url + "/healthz", verify=ssl.create_default_context(cafile=str(tmp_path / "ca.pem")))
        assert answer.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(web.url.replace("https", "http") + "/healthz", timeout=5)
    finally:
        web.stop()
