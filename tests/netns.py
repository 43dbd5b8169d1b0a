"""Network namespaces for tests of machines on a network: each "machine" is a namespace with one
address (10.77.0.1, .2, ...) on a bridge that lives in a namespace of its own. Traffic stays on
loopback and inside these namespaces: nothing is added to the host's own network. The namespaces
are removed on exit whatever happened (and veth pairs go with them). Needs root.
"""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SUBNET = "10.77.0"
_serial = itertools.count()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces, a bridge and veth pairs with `ip`")
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        pytest.skip("`ip netns` does not work here (no iproute2, or namespaces are not permitted)")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class Lab:
    """``Lab(3)``: three machine namespaces on a bridge. A context manager."""

    def __init__(self, count: int):
        tag = f"ct{os.getpid() % 100000}x{next(_serial)}"
        self.hub = f"{tag}-hub"
        self.machines = [f"{tag}-m{i + 1}" for i in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def address(self, i: int) -> str:
        """The address of machine ``i`` (0-based)."""
        return f"{SUBNET}.{i + 1}"

    def __enter__(self) -> "Lab":
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.destroy()

    def _create(self) -> None:
        ip("netns", "add", self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.machines):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            # both ends are created inside namespaces: the host never holds either
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"port{i}", "netns", self.hub)
            ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", self.hub, "link", "set", f"port{i}", "master", "br0")
            ip("-n", self.hub, "link", "set", f"port{i}", "up")

    def cut(self, i: int) -> None:
        """A network partition: machine ``i``'s link goes down (its processes live on)."""
        ip("-n", self.machines[i], "link", "set", "eth0", "down")

    def heal(self, i: int) -> None:
        ip("-n", self.machines[i], "link", "set", "eth0", "up")

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.machines[i]]

    def spawn(self, i: int, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` on machine ``i`` (``ip netns exec`` execs, so the pid is the program's)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen([*self.prefix(i), *args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.procs.append(proc)
        return proc

    def conductor(self, i: int, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self.spawn(i, [sys.executable, "-m", "conductor", *args], log, env)

    def cli(self, i: int, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the real ``conductor`` command line on machine ``i``."""
        return subprocess.run([*self.prefix(i), sys.executable, "-m", "conductor", *args], capture_output=True,
                              text=True, env={**os.environ, **(env or {})}, timeout=timeout)

    def destroy(self) -> None:
        """Kill what was started here (and every process left in the namespaces), remove the namespaces."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        for ns in [*self.machines, self.hub]:
            pids = ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            ip("netns", "del", ns, check=False)
