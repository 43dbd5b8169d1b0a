"""A laptop cluster of three machines (network namespaces on a bridge, tests/netns.py): the first
runs ``conductor run --cluster``, two ``conductor join``; a job runs across all three; one machine's
etcd and conductor are killed and work goes on; it restarts with the data it has; ``leave`` shrinks
the cluster cleanly; a wrong token, or a token whose CA is not the cluster's, is refused."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from harness import wait_for
from netns import Lab, require_root

TTL = 3


class Machine:
    def __init__(self, lab: Lab, i: int, base: Path):
        self.lab, self.i = lab, i
        self.name = f"m{i + 1}"
        self.data = base / self.name
        self.log = base / f"{self.name}.log"
        self.env = {"CONDUCTOR_DATA": str(self.data)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> "Machine":
        self.proc = self.lab.conductor(self.i, [*args, "--name", self.name, "--advertise", self.lab.address(self.i),
                                                "--ttl", str(TTL), "--slots", "1", "--sweep", "1",
                                                "--data-dir", str(self.data)], self.log)
        wait_for(lambda: self.text().count("ready:") > self.readies or self.proc.poll() is not None,  # type: ignore[union-attr]
                 90, 0.1, f"{self.name} ready")
        assert self.proc.poll() is None, self.text()
        self.readies = self.text().count("ready:")
        return self

    readies = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.cli(self.i, *args, env=self.env)

    def json(self, *args: str) -> object:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def etcd_pid(self) -> int:
        member_data = str(self.data / "cluster" / "member-data")
        return next(p.pid for p in psutil.process_iter(["cmdline"]) if member_data in (p.info["cmdline"] or []))

    def kill(self) -> None:
        """kill -9 the conductor and this machine's etcd member: the machine vanishes."""
        etcd = self.etcd_pid()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        psutil.Process(etcd).kill()
        wait_for(lambda: not psutil.pid_exists(etcd), 10, 0.05, "etcd gone")


def members(machine: Machine) -> list[dict]:
    return machine.json("members")  # type: ignore[return-value]


def healthy_voters(machine: Machine) -> list[str]:
    return sorted(m["name"] for m in members(machine) if m["healthy"] and not m["learner"])


def post(machine: Machine, job: dict, base: Path) -> str:
    path = base / f"job-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(job))
    return machine.json("post", str(path))["id"]  # type: ignore[index]


def completed(machine: Machine, job_id: str) -> dict | None:
    view = machine.json("show", job_id, "--all-tasks")
    return view if view["state"] == "COMPLETED" else None  # type: ignore[index]


def task_nodes(view: dict) -> set[str]:
    return {t["node"] for layer in view["layer_list"] for t in layer["task_list"]}


@pytest.mark.timeout(600)
def test_a_laptop_cluster_grows_by_join_survives_a_lost_machine_and_shrinks_by_leave(tmp_path: Path):
    require_root()
    with Lab(3) as lab:
        m1, m2, m3 = (Machine(lab, i, tmp_path) for i in range(3))
        m1.start("run", "--cluster")
        token = re.search(r"conductor join (\S+)", m1.text()).group(1)  # type: ignore[union-attr]

        # a wrong secret, and a token naming another CA: refused, nothing joined, nothing written
        secret = token.split(".")[1]
        wrong = token.replace(secret, "0" * 32)
        refused = lab.cli(1, "join", wrong, "--advertise", lab.address(1), "--data-dir", str(tmp_path / "x"))
        assert refused.returncode != 0 and "wrong or has expired" in refused.stderr, refused.stderr
        ca_hash = token.split(".")[2].split("@")[0]
        other_ca = token.replace(ca_hash, "f" * 64)
        refused = lab.cli(1, "join", other_ca, "--advertise", lab.address(1), "--data-dir", str(tmp_path / "x"))
        assert refused.returncode != 0 and "not the one the token names" in refused.stderr, refused.stderr
        assert not (tmp_path / "x" / "cluster").exists()
        assert [m["name"] for m in members(m1)] == ["m1"]

        m2.start("join", token)
        m3.start("join", token)
        assert healthy_voters(m1) == ["m1", "m2", "m3"]
        table = m3.cli("members").stdout
        assert table.count("healthy") == 3 and table.count("leader") == 1, table
        printed = m2.cli("token", "--ttl", "1h").stdout  # any machine serves joins
        assert re.fullmatch(rf"conductor join [0-9a-f.]+@{re.escape(lab.address(1))}:2381\n", printed), printed

        # a job runs across all three: six tasks, one slot per machine
        sleepy = {"cmd": ["sleep", "2"]}
        job = post(m1, {"name": "spread", "layers": [{"tasks": [sleepy] * 6}]}, tmp_path)
        view = wait_for(lambda: completed(m1, job), 120, 0.5, "the spread job completed")
        assert task_nodes(view) == {"m1", "m2", "m3"}  # type: ignore[arg-type]

        # the founding machine vanishes (etcd and conductor): the other two go on
        m1.kill()
        job = post(m2, {"name": "after-loss", "layers": [{"tasks": [{"cmd": ["true"]}] * 4}]}, tmp_path)
        view = wait_for(lambda: completed(m3, job), 120, 0.5, "work went on without m1")
        assert task_nodes(view) <= {"m2", "m3"}  # type: ignore[arg-type]
        assert healthy_voters(m2) == ["m2", "m3"]

        # restarted, it rejoins with the data it has (no token, no new member); first its old
        # node key must be gone with its lease, or the name m1 is still taken
        wait_for(lambda: "m1" not in [n["name"] for n in m2.json("nodes")], 60, 0.5,  # type: ignore[attr-defined]
                 "m1's old lease expired")
        m1.start("run", "--cluster")
        wait_for(lambda: healthy_voters(m2) == ["m1", "m2", "m3"], 60, 0.5, "m1 back as a voting member")

        # leave: its conductor stops, its member is removed, its cluster data is gone
        left = m3.cli("leave")
        assert left.returncode == 0, left.stderr
        assert m3.proc is not None and m3.proc.wait(30) == 0
        assert not (m3.data / "cluster").exists()
        assert sorted(m["name"] for m in members(m1)) == ["m1", "m2"]
        # if m3 led, the two left elect a new leader first: health follows within an election
        wait_for(lambda: healthy_voters(m1) == ["m1", "m2"], 30, 0.5, "m1 and m2 healthy voters")
        job = post(m1, {"name": "two", "layers": [{"tasks": [{"cmd": ["true"]}] * 2}]}, tmp_path)
        wait_for(lambda: completed(m2, job), 60, 0.5, "the two-machine cluster runs work")
