"""Real parts for tests: etcd servers and clusters on free loopback ports, conductor processes.

Nothing here imitates etcd: every test talks to a real etcd binary, and conductors are real
processes that can be killed with real signals.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in (2379, 2380):
            return port


def namespace_writes(store, prefix: str) -> list[tuple[str, int]]:
    """Every key under ``prefix`` with its last write: equal before and after means nothing in the
    namespace was written, whatever other tests sharing the etcd did meanwhile."""
    kvs, _ = store.scan(prefix)
    return [(kv.key, kv.mod_revision) for kv in kvs]


def live_lease(store, keys, ttl: int, node: str = "test") -> int:
    """A lease as a node's session holds one: granted, with its ``q/alive/<lease>`` key on it, so
    claims made on it are fenced by it (see conductor.session)."""
    from conductor import codec
    from conductor.ops import Put

    lease = store.grant(ttl)
    store.txn([], [Put(keys.alive(lease), codec.pack({"node": node}), lease)])
    return lease


def tasks_in(store, keys, state: str, user: str = "u", prefix: str = "") -> list:
    """The tasks of ``user`` (ids starting with ``prefix``) in ``state``, as
    :class:`conductor.claims.Ready` entries (value and revision; 0 for a task without a key yet,
    as its chunk gives it): for QUEUED, what a node's cache offers to claim."""
    from conductor import chunks, codec
    from conductor.claims import Ready

    layers, raw, keyed = {}, {}, {}
    for kv in store.scan(keys.objects(user))[0]:
        kind, _, name = keys.split_stream(kv.key)
        if kind == "layers":
            layers[name] = codec.unpack(kv.value)
        elif kind == "chunks":
            raw.setdefault(name.partition("/")[0], []).append(kv.value)
        elif kind == "tasks" and name.startswith(prefix):
            keyed[name] = (codec.unpack(kv.value), kv.mod_revision)
    out = [Ready(task, rev) for task, rev in keyed.values() if task.get("state") == state]
    for layer_id, values in raw.items():
        layer = layers.get(layer_id)
        if layer is not None and chunks.state_in(layer) == state:
            out += [Ready(t, 0) for t in chunks.tasks_of(layer, values, state).values()
                    if t["id"].startswith(prefix) and t["id"] not in keyed]
    return sorted(out, key=lambda e: [int(p) if p.isdigit() else p for p in e.id.split(".")])


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}" +
                         (f" (last error: {last_exc!r})" if last_exc else ""))


@dataclass
class TlsFiles:
    """PEM files for an etcd served over TLS that wants client certificates (tests/test_tls.py makes them)."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def etcd_args(self) -> list[str]:
        return ["--cert-file", self.server_cert, "--key-file", self.server_key, "--trusted-ca-file", self.ca,
                "--client-cert-auth"]

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


class EtcdServer:
    """One etcd member (or a single-member cluster) on free ports; over TLS on its client port
    (https://, client certificates required) with ``tls``."""

    def __init__(self, data_dir: Path, name: str = "e0", client_port: int | None = None,
                 peer_port: int | None = None, cluster: str | None = None, state: str = "new",
                 extra: list[str] | None = None, tls: TlsFiles | None = None):
        self.data_dir = data_dir
        self.name = name
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.cluster = cluster or f"{name}=http://127.0.0.1:{self.peer_port}"
        self.state = state
        self.extra = list(extra or [])  # more etcd flags, e.g. ["--quota-backend-bytes", "8388608"]
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def start(self, wait: bool = True) -> "EtcdServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        client = self.url
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.data_dir.parent / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [ETCD, "--name", self.name, "--data-dir", str(self.data_dir), "--listen-client-urls", client,
             "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", self.cluster, "--initial-cluster-state", self.state,
             "--initial-cluster-token", "conductor-test", "--heartbeat-interval", "50", "--election-timeout", "500",
             *(self.tls.etcd_args() if self.tls else []), *self.extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        import urllib.request

        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"etcd {self.name} exited"
            context = self.tls.context() if self.tls else None
            with urllib.request.urlopen(f"{self.url}/health", timeout=1, context=context) as resp:
                return b'"true"' in resp.read()

        wait_for(healthy, timeout, 0.1, f"etcd {self.name} healthy")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.state = "existing"
        self.start()


class EtcdCluster:
    """Several etcd members forming one cluster on loopback."""

    def __init__(self, base: Path, size: int = 3):
        peers = [(f"m{i}", free_port(), free_port()) for i in range(size)]
        cluster = ",".join(f"{n}=http://127.0.0.1:{pp}" for n, _, pp in peers)
        self.members = [EtcdServer(base / n, n, cp, pp, cluster) for n, cp, pp in peers]

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> "EtcdCluster":
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_ready()
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()


class Node:
    """A real ``conductor run`` process."""

    def __init__(self, etcd: str, namespace: str, name: str, base: Path, ttl: int = 2, slots: int = 2,
                 extra: list[str] | None = None, env: dict[str, str] | None = None):
        self.name = name
        self.dir = base / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "conductor.log"
        self.args = [sys.executable, "-m", "conductor", "run", "--etcd", etcd, "--namespace", namespace,
                     "--name", name, "--ttl", str(ttl), *(["--slots", str(slots)] if slots else []),  # 0: the default
                     "--data-dir", str(self.dir), "--sweep", "1", *(extra or [])]
        if "--http" not in self.args:  # a web server per test node would only load the machine; web tests ask for one
            self.args += ["--http", "off"]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Node":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, cwd=str(self.dir))
        log.close()
        return self

    def wait_ready(self, timeout: float = 20.0) -> "Node":
        wait_for(lambda: "ready:" in self.log() or (self.proc is not None and self.proc.poll() is not None),
                 timeout, 0.05, f"node {self.name} ready")
        assert self.proc is not None and self.proc.poll() is None, f"node {self.name} exited:\n{self.log()}"
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


def conductor_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
                  timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the real ``conductor`` command line."""
    return subprocess.run([sys.executable, "-m", "conductor", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input, timeout=timeout)
