"""Self-fencing that works even when the conductor cannot: a tiny watchdog process.

The conductor starts ``python -m conductor.fence`` beside itself and tells it, over a pipe, the
process groups of its running tasks and a deadline on the monotonic clock: the last lease renewal
etcd confirmed plus TTL minus a margin. If the deadline passes (the conductor is partitioned from
etcd, or stopped with SIGSTOP, or too busy) the watchdog SIGKILLs every registered process group,
before etcd can expire the lease and another node can start the same task (invariant 5). If the
pipe closes (the conductor died, even by ``kill -9``) it kills them at once and exits.

Container tasks are killed through the Docker API the conductor uses (``--docker-host``).

Protocol, one line each: ``d <deadline>``, ``+ <pgid>``, ``- <pgid>``, ``+c <container>``,
``-c <container>``, ``k`` (kill all now).
"""
from __future__ import annotations

import http.client
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

log = logging.getLogger("conductor.fence")


def _kill_container(docker_host: str, container: str) -> None:
    """POST /containers/<id>/kill over the Docker API, with nothing but the standard library."""
    try:
        if docker_host.startswith("unix://"):
            conn: http.client.HTTPConnection = _UnixConnection(docker_host[len("unix://"):])
        else:
            host = docker_host.split("://", 1)[-1]
            conn = http.client.HTTPConnection(host, timeout=5)
        conn.request("POST", f"/containers/{container}/kill?signal=SIGKILL")
        conn.getresponse().read()
        conn.close()
    except OSError as exc:
        print(f"conductor fence: cannot kill container {container}: {exc}", file=sys.stderr, flush=True)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def _kill_all(groups: set[int], containers: set[str], docker_host: str, why: str) -> None:
    if groups or containers:
        print(f"conductor fence: killing {len(groups) + len(containers)} task(s): {why}", file=sys.stderr, flush=True)
    for pgid in list(groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for container in list(containers):
        _kill_container(docker_host, container)
    groups.clear()
    containers.clear()


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    docker_host = sys.argv[1] if len(sys.argv) > 1 else ""
    fd = sys.stdin.fileno()
    groups: set[int] = set()
    containers: set[str] = set()
    deadline = float("inf")
    buffer = b""
    while True:
        wait = deadline - time.monotonic()
        if wait <= 0:
            _kill_all(groups, containers, docker_host, "the lease was not renewed in time (self-fencing)")
            deadline = float("inf")
            continue
        readable, _, _ = select.select([fd], [], [], min(wait, 3600.0))
        if not readable:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            _kill_all(groups, containers, docker_host, "the conductor is gone")
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            op, _, arg = line.decode().partition(" ")
            if op == "d":
                deadline = float(arg)
            elif op == "+":
                groups.add(int(arg))
            elif op == "-":
                groups.discard(int(arg))
            elif op == "+c":
                containers.add(arg)
            elif op == "-c":
                containers.discard(arg)
            elif op == "k":
                _kill_all(groups, containers, docker_host, arg or "asked to")


class Fence:
    """The conductor's end of the watchdog. Thread-safe."""

    def __init__(self, docker_host: str = "") -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self.docker_host = docker_host

    def start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "conductor.fence", self.docker_host],
                                      stdin=subprocess.PIPE, start_new_session=True, close_fds=True)

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc is None or self._proc.stdin is None:
                return
            try:
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                log.error("the fence watchdog is gone; running tasks are no longer self-fenced")
                self._proc = None

    def deadline(self, monotonic_deadline: float) -> None:
        self._send(f"d {monotonic_deadline:.3f}")

    def add(self, pgid: int) -> None:
        self._send(f"+ {pgid}")

    def remove(self, pgid: int) -> None:
        self._send(f"- {pgid}")

    def add_container(self, container: str) -> None:
        self._send(f"+c {container}")

    def remove_container(self, container: str) -> None:
        self._send(f"-c {container}")

    def kill_all(self, why: str = "") -> None:
        self._send(f"k {why}")

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
