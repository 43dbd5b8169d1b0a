"""A local etcd for a single machine: found if one answers, started as a child if not."""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .errors import EtcdMissing

log = logging.getLogger("conductor.localetcd")

INSTALL_HINT = ("install etcd (Debian/Ubuntu: sudo apt-get install etcd-server; macOS: brew install etcd) "
                "or point --etcd (or CONDUCTOR_ETCD) at a running cluster")


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalEtcd:
    """An etcd child process serving 127.0.0.1:<port>, with its data under ``data_dir``."""

    def __init__(self, data_dir: Path, port: int = 2379, peer_port: int | None = None, name: str = "conductor"):
        self.data_dir = data_dir
        self.port = port
        default_peer = port == 2379 and not port_open("127.0.0.1", 2380)
        self.peer_port = peer_port or (2380 if default_peer else free_port())
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: float = 15.0) -> None:
        binary = shutil.which("etcd")
        if not binary:
            raise EtcdMissing(f"no etcd answers on 127.0.0.1:{self.port} and no etcd binary is installed: {INSTALL_HINT}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [binary, "--name", self.name, "--data-dir", str(self.data_dir / "member-data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}", "--auto-compaction-mode", "periodic",
                "--auto-compaction-retention", "1h"]
        log_path = self.data_dir / "etcd.log"
        self.proc = start_etcd(args, log_path)
        wait_listening(self.proc, self.port, wait, "the local etcd", log_path)

    def stop(self) -> None:
        stop_process(self.proc)


def start_etcd(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start an etcd child in a session of its own, logging to ``log_path``; never a task to kill."""
    with open(log_path, "ab") as logfile:
        proc = subprocess.Popen(args, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    from .supervision import KEEP_PIDS

    KEEP_PIDS.add(proc.pid)
    return proc


def wait_listening(proc: subprocess.Popen[bytes], port: int, wait: float, what: str, log_path: Path) -> None:
    """Until ``port`` on loopback answers; raises EtcdMissing (and stops it) if etcd exits or is late."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EtcdMissing(f"{what} exited at once (status {proc.returncode}); see {log_path}")
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.1)
    stop_process(proc)
    raise EtcdMissing(f"{what} did not answer within {wait:.0f}s; see {log_path}")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
