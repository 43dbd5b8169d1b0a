"""The compose cluster (compose/compose.yaml) brought up with podman-compose: three etcd members
with client and peer TLS and two conductors, a job posted from the host over TLS with a client
certificate, one etcd member and one conductor stopped while it runs, and the job completing; then
a conductor outside compose (on the host) joining and running a task.

The image is built by compose/build-image.sh (a Debian rootfs by mmdebstrap, then the Containerfile;
both cached), which takes minutes the first time: CI runs this file as its own step, after the
rest of the suite (see .ci/run and compose/README.md). ``scripts/setup --compose`` installs what it
needs. CONDUCTOR_SOURCE, if set, is the checkout the image installs (default: this one).
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conductor.client import Client
from conductor.credentials import Credentials
from harness import ROOT, Node, free_port, wait_for

COMPOSE_FILE = ROOT / "compose" / "compose.yaml"
JOB = ROOT / "compose" / "example.yaml"  # the one compose/README.md posts: 8 tasks of 3 s, then one
TTL = 6  # the conductors' lease TTL: how soon the stopped conductor's tasks are taken over
NAMESPACE = "/conductor/"  # the compose conductors' (the default)

# This machine's hard limits are below podman's default ulimits, and it has no syslog: containers
# get limits it can grant and podman logs its events to a file. The network stays podman's bridge.
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def _podman_compose() -> str:
    """The podman-compose of this venv (scripts/setup --compose; Debian's 1.0 ignores --scale)."""
    found = Path(sys.executable).parent / "podman-compose"
    assert found.exists(), "podman-compose is not in the venv: run scripts/setup --compose"
    return str(found)


def _limit(which: int, cap: int) -> int:
    hard = resource.getrlimit(which)[1]
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


class Cluster:
    """One compose project: its podman-compose command line, environment and containers."""

    def __init__(self, base: Path):
        assert shutil.which("podman"), "podman is not installed: run scripts/setup --compose"
        self.project = f"conductor-test-{uuid.uuid4().hex[:8]}"
        self.certs = base / "certs"
        self.certs.mkdir(parents=True)
        self.port = free_port()
        conf = base / "containers.conf"
        conf.write_text(CONTAINERS_CONF.format(nofile=_limit(resource.RLIMIT_NOFILE, 65536),
                                               nproc=_limit(resource.RLIMIT_NPROC, 4096)))
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf), "CONDUCTOR_CERTS": str(self.certs),
                    "CONDUCTOR_ETCD_PORT": str(self.port), "CONDUCTOR_TTL": str(TTL)}
        self.compose = [_podman_compose(), "-f", str(COMPOSE_FILE), "-p", self.project]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)

    def build(self) -> None:
        """The image, from this checkout (cached: minutes the first time, seconds after)."""
        done = self.run(str(ROOT / "compose" / "build-image.sh"), timeout=1500)
        assert done.returncode == 0, f"compose/build-image.sh failed:\n{done.stderr[-4000:]}"

    def up(self, conductors: int) -> None:
        done = self.run(*self.compose, "up", "-d", "--scale", f"conductor={conductors}")
        assert done.returncode == 0, f"compose up failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"

    def container(self, service: str, number: int = 1) -> str:
        return f"{self.project}_{service}_{number}"

    def running(self, name: str) -> bool:
        done = self.run("podman", "inspect", "--format", "{{.State.Running}}", name)
        return done.stdout.strip() == "true"

    def stop(self, name: str) -> None:
        done = self.run("podman", "stop", "-t", "5", name)
        assert done.returncode == 0, done.stderr

    def logs(self) -> str:
        """Every container's last lines, for a failure's report."""
        names = self.run("podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
                         "--format", "{{.Names}}").stdout.split()
        return "\n".join(f"--- {name}\n" + self.run("podman", "logs", "--tail", "30", name).stderr[-3000:]
                         for name in names)

    @contextlib.contextmanager
    def diagnosed(self) -> Iterator[None]:
        """On a failure, print every container's last lines (pytest shows them with the failure)."""
        try:
            yield
        except BaseException:
            print(self.logs())
            raise

    def down(self) -> None:
        """``down -v`` (--remove-orphans: podman-compose's down knows one conductor, not the scaled
        ones), then whatever is left of the project, so that a failed run leaves nothing behind."""
        self.run(*self.compose, "down", "-v", "-t", "2", "--remove-orphans")
        label = f"label=io.podman.compose.project={self.project}"
        ids = self.run("podman", "ps", "-aq", "--filter", label).stdout.split()
        if ids:
            self.run("podman", "rm", "-f", "-t", "0", *ids)
        for volume in self.run("podman", "volume", "ls", "-q", "--filter", label).stdout.split():
            self.run("podman", "volume", "rm", "-f", volume)
        self.run("podman", "network", "rm", "-f", f"{self.project}_default")

    def client(self) -> Client:
        """A client on the host, through the one published etcd port, with the host's certificate."""
        creds = Credentials(cacert=str(self.certs / "ca.pem"), cert=str(self.certs / "host.pem"),
                            key=str(self.certs / "host-key.pem"))
        return Client(etcd=f"127.0.0.1:{self.port}", namespace=NAMESPACE, credentials=creds, user="compose-test")

    def outside_node(self, base: Path) -> Node:
        """A conductor on the host, not in compose, joining as compose/README.md says: the published
        port and the TLS options (with the host's certificate)."""
        tls = ["--cacert", str(self.certs / "ca.pem"), "--cert", str(self.certs / "host.pem"),
               "--key", str(self.certs / "host-key.pem")]
        return Node(f"127.0.0.1:{self.port}", NAMESPACE, "outside", base, ttl=10, extra=[*tls, "--labels", "where=outside"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.build()
    try:
        yield c
    finally:
        c.down()


def _published_only_on_loopback(cluster: Cluster) -> None:
    for name in (cluster.container(s) for s in ("etcd1", "etcd2", "etcd3", "conductor")):
        done = cluster.run("podman", "inspect", "--format", "{{json .HostConfig.PortBindings}}", name)
        for bindings in (json.loads(done.stdout or "{}") or {}).values():
            for binding in bindings or []:
                assert binding["HostIp"] == "127.0.0.1", f"{name} publishes {binding} beyond loopback"


def _job_survives_stops(cluster: Cluster, client: Client) -> None:
    """Post the example; once both conductors run tasks, stop etcd2 and conductor 1; it completes."""
    job = client.post(JOB)
    # both conductors busy, so the one stopped has tasks to hand back (or to lose with its lease)
    wait_for(lambda: all(n["running"] for n in client.nodes()), timeout=60, interval=0.2,
             what="tasks running on both conductors")
    # etcd1 is the host's way in; the conductors reach all three
    for name in (cluster.container("etcd2"), cluster.container("conductor", 1)):
        cluster.stop(name)
    wait_for(lambda: len(client.nodes()) == 1, timeout=60, interval=0.5, what="the stopped conductor gone")
    final = client.wait(job, timeout=180)
    assert final["state"] == "COMPLETED", final
    assert client.result(f"{job}.1.0") == b"done\n"
    for i in range(8):  # every task's own result: each ran to its end somewhere
        assert (client.result(f"{job}.0.{i}") or b"").startswith(f"w{i} ran on ".encode())


def _outside_conductor_joins(cluster: Cluster, client: Client, nodes: list[Node], base: Path) -> None:
    """A conductor on the host joins as compose/README.md says and runs a task only it may run."""
    nodes.append(cluster.outside_node(base).start())
    nodes[-1].wait_ready(timeout=60)
    job = client.post({"name": "outside", "layers": [{"name": "l", "tasks": [
        {"name": "t", "needs": {"labels": {"where": "outside"}}, "shell": True,
         "cmd": "echo $CONDUCTOR_NODE > $CONDUCTOR_RESULT"}]}]})
    assert client.wait(job, timeout=60)["state"] == "COMPLETED"
    assert client.result(f"{job}.0.0") == b"outside\n"


@pytest.mark.timeout(1800)
def test_job_completes_with_an_etcd_member_and_a_conductor_stopped(cluster: Cluster, nodes: list[Node],
                                                                    tmp_path: Path) -> None:
    with cluster.diagnosed():
        cluster.up(conductors=2)
        _published_only_on_loopback(cluster)
        wait_for(lambda: (cluster.certs / "host.pem").exists(), timeout=60, what="the certs service")
        with cluster.client() as client:
            wait_for(lambda: len(client.nodes()) == 2, timeout=120, interval=0.5, what="two conductors joined over TLS")
            _job_survives_stops(cluster, client)
            _outside_conductor_joins(cluster, client, nodes, tmp_path / "nodes")
        assert not cluster.running(cluster.container("etcd2")), "the stopped etcd member came back"
        assert not cluster.running(cluster.container("conductor", 1)), "the stopped conductor came back"
        assert cluster.running(cluster.container("conductor", 2))
