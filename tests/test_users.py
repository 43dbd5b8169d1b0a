"""Users kept apart by etcd itself (issue 10): ``auth enable``, ``user add``, per-user prefixes.

A real etcd: Conductor turns its auth on (``conductor auth enable``), an admin adds alice and bob,
two real conductors run as the node account. Then bob, with his own credentials, tries every way
in to alice's job: the CLI, the Python client, and etcdctl with his etcd user. Nothing of it
works; an admin's does; the nodes run both users' tasks; alice's secret is nowhere in plain text.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from conductor import codec, roles
from conductor.client import Client
from conductor.credentials import Credentials
from conductor.errors import PermissionDenied
from conductor.keys import Keys
from conductor.ops import Delete, Put, Txn
from conductor.store import Store
from harness import EtcdServer, Node, conductor_cli, wait_for

NS = "/team/"
SECRET = "s3cr3t-Xq9-never-shown"
JOB = {"name": "alices", "inputs": [{"name": "token", "secret": True}],
       "layers": [{"tasks": [{"cmd": ["sh", "-c", "echo user=$CONDUCTOR_USER token=$TOKEN; echo {token} >&2; "
                                      "echo done > $CONDUCTOR_RESULT"], "env": {"TOKEN": "{token}"}}]}]}


class Cluster:
    def __init__(self, etcd: EtcdServer, tmp: Path):
        self.etcd = etcd
        self.tmp = tmp
        self.common = ["--etcd", etcd.endpoint, "--namespace", NS]

    def pw(self, name: str, password: str) -> str:
        path = self.tmp / f"{name}.pw"
        path.write_text(password + "\n")
        return str(path)

    def cli(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        return conductor_cli(*args, *self.common, "--user", who, "--password-file", str(self.tmp / f"{who}.pw"),
                             timeout=60)

    def client(self, who: str) -> Client:
        return Client(etcd=self.etcd.endpoint, namespace=NS,
                      credentials=Credentials(user=who, password_file=str(self.tmp / f"{who}.pw")))

    def etcdctl(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        password = (self.tmp / f"{who}.pw").read_text().strip()
        return subprocess.run(["etcdctl", "--endpoints", self.etcd.url, "--command-timeout", "30s",  # bcrypt on a busy box
                               "--dial-timeout", "10s", "--user", f"{who}:{password}", *args],
                              capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=60)


@pytest.fixture
def team(tmp_path: Path, nodes: list[Node]) -> Iterator[Cluster]:
    etcd = EtcdServer(tmp_path / "etcd" / "data", "team").start()
    c = Cluster(etcd, tmp_path)
    c.pw("ada", "ada-pw")
    node_pw = tmp_path / "node.pw"
    run = conductor_cli("auth", "enable", "--admin", "ada", "--admin-password-file", str(tmp_path / "ada.pw"),
                        "--node-password-file", str(node_pw), *c.common, timeout=60)
    assert run.returncode == 0, run.stderr
    assert node_pw.exists() and oct(node_pw.stat().st_mode & 0o777) == "0o600"
    for name in ("alice", "bob"):
        done = c.cli("ada", "user", "add", name, "--new-password-file", c.pw(name, f"{name}-pw"))
        assert done.returncode == 0, done.stderr
    for n in range(2):
        node = Node(etcd.endpoint, NS, f"n{n}", tmp_path / "nodes",
                    extra=["--user", "conductor", "--password-file", str(node_pw)]).start()
        nodes.append(node)
        node.wait_ready()
    yield c
    etcd.stop()


def test_users_are_kept_apart_by_etcd(team: Cluster, nodes: list[Node]) -> None:
    with team.client("alice") as alice, team.client("bob") as bob, team.client("ada") as ada:
        job = alice.post(JOB, params={"token": SECRET})
        assert alice.wait(job, timeout=60)["state"] == "COMPLETED"
        mine = bob.post({"name": "bobs", "layers": [{"tasks": [{"cmd": ["sh", "-c", "echo $CONDUCTOR_USER"]}]}]})
        assert bob.wait(mine, timeout=60)["state"] == "COMPLETED", "nodes run every user's tasks"
        task = f"{job}.0.0"
        assert alice.task(task)["log"]["tail"].startswith("user=alice token=****")
        assert bob.task(f"{mine}.0.0")["log"]["tail"] == "bob\n"

        # bob through the Python client: every read and change is refused, naming the object
        for attempt in (lambda: bob.show(job), lambda: bob.task(task), lambda: bob.result(task),
                        lambda: bob.pause(job), lambda: bob.kill(job), lambda: bob.retry(task),
                        lambda: bob.logs(task), lambda: bob.env(job), lambda: bob.jobs(all_users=True),
                        lambda: bob.nodes()):
            with pytest.raises(PermissionDenied) as denied:
                attempt()
            assert "permission denied" in str(denied.value).lower()
        assert [j["id"] for j in bob.jobs()] == [mine], "bob sees only his own jobs"

        # bob through the CLI: one clear line, the permission-denied status
        for args in (["show", job], ["pause", job], ["kill", task], ["retry", task], ["logs", task],
                     ["result", "get", task], ["show", "--all-users"], ["nodes"]):
            run = team.cli("bob", *args)
            assert run.returncode == 10 and "Traceback" not in run.stderr, (args, run.stderr)
            assert len(run.stderr.strip().splitlines()) == 1 and "denied" in run.stderr, (args, run.stderr)
            named = args[-1] if args[-1] in (job, task) else "admins"
            assert named in run.stderr, (args, run.stderr)  # the object refused, or who may

        # bob with etcdctl and his own etcd user: alice's keys are out of reach, read or write
        k = Keys(NS)
        for key in (k.job("alice", job), k.result("alice", task), k.secrets("alice", job), k.seal_private(),
                    k.task("alice", task), k.account("alice")):
            run = team.etcdctl("bob", "get", key)
            assert run.returncode != 0 and "permission denied" in run.stderr, (key, run.stdout)
        for key in (k.kill("alice", task), k.paused("alice", job), k.job("alice", job), k.task("alice", task),
                    k.conc("x", 0), k.node("fake"), k.account("bob"), k.shared_template("t")):
            run = team.etcdctl("bob", "put", key, "x")
            assert run.returncode != 0 and "permission denied" in run.stderr, (key, run.stdout)
        assert team.etcdctl("bob", "get", "--prefix", "--keys-only", NS + "users/").returncode != 0
        assert team.etcdctl("bob", "get", "--prefix", "--keys-only", NS + "q/u/").returncode != 0
        assert team.etcdctl("bob", "get", "--prefix", "--keys-only", k.objects("bob")).returncode == 0
        assert team.etcdctl("bob", "get", "--prefix", "--keys-only", k.user("bob")).returncode == 0

        # an admin sees and steers every user's jobs
        assert {j["id"] for j in ada.jobs(all_users=True)} >= {job, mine}
        assert ada.show(job)["state"] == "COMPLETED" and ada.result(task) == b"done\n"
        assert ada.retry(task)[0].done and alice.wait(job, timeout=60)["state"] == "COMPLETED"
        assert {n["name"] for n in ada.nodes()} == {"n0", "n1"}
        run = team.cli("ada", "show", "--all-users")
        assert run.returncode == 0 and job in run.stdout and mine in run.stdout, run.stderr

        # the secret: sealed in etcd, masked everywhere it is shown, never in a node's log
        everything = subprocess.run(["etcdctl", "--endpoints", team.etcd.url, "--command-timeout", "30s",
                                     "--user", "ada:ada-pw", "get",
                                     "--prefix", NS, "-w", "json"], capture_output=True, text=True,
                                    env={**os.environ, "ETCDCTL_API": "3"}, timeout=60).stdout
        dump = subprocess.run(["etcdctl", "--endpoints", team.etcd.url, "--command-timeout", "30s",
                               "--user", "ada:ada-pw", "get", "--prefix", NS],
                              capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=60).stdout
        assert everything and SECRET.encode() not in dump and SECRET not in everything
        sealed = codec.unpack(ada.store.get(k.secrets("alice", job)).value)
        assert sealed["sealed"] and sealed["names"] == ["token"]
        outputs = [team.cli("alice", *args) for args in (["show", job], ["show", task], ["show", task, "--json"],
                                                        ["logs", task], ["result", "get", task])]
        for out in outputs:
            assert out.returncode == 0 and SECRET not in out.stdout + out.stderr, out.stderr
        for node in nodes:  # the node account may do every chore: retention, compaction, messages, fires...
            bad = [line for line in node.log().splitlines() if " ERROR " in line or "failed" in line
                   or "denied" in line]
            assert not bad, bad
        task_logs = [f for node in nodes for f in node.dir.rglob(f"{task}*") if f.is_file()]
        assert task_logs, "the task's own log file on its node was looked at"
        for node in nodes:
            assert SECRET not in node.log()
            for file in node.dir.rglob("*"):
                if file.is_file():
                    assert SECRET.encode() not in file.read_bytes(), file


def test_roles_grant_every_key_a_user_writes_and_nothing_else() -> None:
    k = Keys(NS)
    alice = roles.user_grants(k, "alice")
    for key in (k.job("alice", "j"), k.task("alice", "j.0.0"), k.layer("alice", "j.0"), k.paused("alice", "j"),
                k.kill("alice", "j.0.0"), k.active("alice", "j"), k.pending("alice", "j"), k.template("alice", "t"),
                k.schedule("alice", "s"), k.outbox("alice", "j/x"), k.secrets("alice", "j"), k.count("alice", "j", "a1")):
        assert roles.allows(alice, key, write=True), key
    for key in (k.conc("x", 0), k.rate("x"), k.account("alice"), k.seal_public(),
                k.shared_template("t")):
        assert roles.allows(alice, key, write=False) and not roles.allows(alice, key, write=True), key
    for key in (k.job("alicia", "j"), k.job("bob", "j"), k.node("n"), k.seal_private(), k.meta("compaction"),
                k.account("bob"), k.leader("sweeper"), k.task("bob", "j.0.0"), k.alive(1), NS + "users/alice",
                k.task("alicia", "j.0.0")):
        assert not roles.allows(alice, key, write=False), key
    assert roles.valid_name("conductor") and roles.valid_name("a/b") and roles.valid_name("") and not roles.valid_name("ann")


class RecordingStore(Store):
    """A real store (real etcd) that also notes the key of every write it sends."""

    written: list[str]

    def _note(self, ops: Any) -> None:
        for op in ops:
            if isinstance(op, (Put, Delete)):
                self.written.append(op.key)
            elif isinstance(op, Txn):
                self._note([*op.success, *op.failure])

    def txn(self, compare: Any, success: Any, failure: Any = (), *args: Any, **kw: Any) -> Any:
        self._note([*success, *failure])
        return super().txn(compare, success, failure, *args, **kw)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        self.written.append(key)
        return super().put(key, value, lease)

    def delete(self, key: str, range_end: str | None = None) -> int:
        self.written.append(key)
        return super().delete(key, range_end)


def test_every_key_a_user_writes_is_granted_by_the_documented_roles(team: Cluster) -> None:
    """Every write a user's commands make is one the roles table of docs/keyspace.md grants them
    (and etcd, enforcing the same grants, lets through); every key anyone wrote is a documented kind."""
    from test_docs import documented_user_access

    store = RecordingStore(team.etcd.endpoint, credentials=Credentials(user="alice", password="alice-pw"))
    store.written = []
    keys = Keys(NS)
    with Client(namespace=NS, store=store) as alice, team.client("ada") as ada:
        ada.add_template({"name": "hello", "inputs": ["who"], "triggers": ["greet"],
                          "layers": [{"tasks": [{"cmd": ["echo", "hello {who}"]}]}]}, shared=True)
        job = alice.post(JOB, params={"token": SECRET}, paused=True)
        alice.unpause(job)
        alice.wait(job, timeout=60)
        alice.set_env(job, {"X": "1"})
        alice.retry(f"{job}.0.0")
        alice.wait(job, timeout=60)
        slow = alice.post({"name": "slow", "layers": [{"tasks": [{"cmd": ["sleep", "30"]}]},
                                                      {"tasks": [{"cmd": ["true"]}]}]})
        wait_for(lambda: alice.counts(slow)["running"] == 1, 30, what="the slow task runs")
        alice.kill(f"{slow}.0.0")
        alice.skip(f"{slow}.1")
        alice.add_template({"name": "mine", "inputs": ["n"], "triggers": ["go"],
                            "layers": [{"tasks": [{"cmd": ["echo", "{n}"]}]}]})
        for posted in alice.send("go", {"n": "1"}) + alice.send("greet", {"who": "alice"}):
            alice.wait(posted, timeout=60)
        alice.add_schedule("often", "* * * * * *", "mine", {"n": "2"})
        wait_for(lambda: alice.schedule("often")["last"] is not None, 30, what="a tick fired")
        alice.pause_schedule("often")
        alice.remove_schedule("often")
        alice.remove_template("mine")
        tried = len(store.written)
        with pytest.raises(PermissionDenied):  # publishing is for admins: etcd refuses it
            alice.add_template({"name": "hijack", "layers": [{"tasks": [{"cmd": ["true"]}]}]}, shared=True)
        del store.written[tried:]  # tried and refused: not a write
        everything = [kv.key for kv in ada.store.iter_prefix(NS, keys_only=True)]
    grants = roles.user_grants_from(keys, "alice", documented_user_access())
    refused = sorted({key for key in store.written if not roles.allows(grants, key, write=True)})
    assert store.written and not refused, f"alice wrote keys the documented roles do not grant her: {refused}"
    kinds = [roles.kind_of(keys, key) for key in everything]
    assert all(kinds), [key for key, kind in zip(everything, kinds) if not kind]
    assert {"job", "task", "count", "account", "seal_public", "seal_private", "shared_template",
            "node", "result", "log"} <= set(kinds)
