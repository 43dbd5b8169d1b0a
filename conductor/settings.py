"""Settings of a conductor and of a client, passed in (no globals), with their defaults."""
from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .credentials import Credentials
from .keys import DEFAULT_NAMESPACE

LOCAL_ETCD = "127.0.0.1:2379"


def default_data_dir() -> Path:
    """``$CONDUCTOR_DATA``, else ``$XDG_DATA_HOME/conductor``, else ``~/.local/share/conductor``."""
    if os.environ.get("CONDUCTOR_DATA"):
        return Path(os.environ["CONDUCTOR_DATA"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "conductor"


def default_user() -> str:
    if os.environ.get("CONDUCTOR_USER"):  # NAME or NAME:PASSWORD (the etcd user's, see credentials)
        return os.environ["CONDUCTOR_USER"].partition(":")[0]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "default"


def default_etcd() -> list[str]:
    env = os.environ.get("CONDUCTOR_ETCD")
    return [e for e in env.split(",") if e.strip()] if env else []


def default_namespace() -> str:
    return os.environ.get("CONDUCTOR_NAMESPACE", DEFAULT_NAMESPACE)


SLOTS_PER_CPU = 8  # default slots per CPU, for tasks of short layers (docs/design.md, "Slots")


def default_slots() -> int:
    """``--slots`` when not given: SLOTS_PER_CPU per CPU. Only tasks of layers seen to run short
    (conductor/runtable.py) use more than the CPU count (``long_slots``)."""
    return SLOTS_PER_CPU * (os.cpu_count() or 1)


@dataclass
class NodeSettings:
    """Everything ``conductor run`` takes."""

    etcd: list[str] = field(default_factory=default_etcd)
    namespace: str = field(default_factory=default_namespace)
    name: str = ""
    slots: int = field(default_factory=lambda: default_slots())
    long_slots: int = field(default_factory=lambda: os.cpu_count() or 1)  # for tasks of layers not known short
    labels: dict[str, str] = field(default_factory=dict)
    ttl: int = 10
    data_dir: Path = field(default_factory=default_data_dir)
    sweep: float = 10.0  # seconds between safety-net sweeps
    grace: float = 10.0  # SIGTERM -> SIGKILL for kills
    shutdown_grace: float = 3.0  # SIGTERM -> SIGKILL when handing tasks back on shutdown
    drain: bool = False
    result_cap: int = 64 * 1024
    tail_cap: int = 8 * 1024
    etcd_timeout: float = 5.0
    credentials: Credentials = field(default_factory=Credentials)  # TLS files and etcd user
    cwd: str = field(default_factory=os.getcwd)
    docker_host: str = ""  # Docker API for container tasks; "" = $DOCKER_HOST or a local socket
    keep: float = 7 * 86400.0  # finished jobs (and local task logs) are removed after this long
    gc_every: float = 3600.0  # how often the sweeper removes old jobs and compacts etcd
    partial_grace: float = 600.0  # the keys of a post that never finished are removed after this long
    clock_skew: float = 0.0  # added to this node's wall clock, conductor.clock.Clock (tests of skewed clocks)
    etcd_tls: tuple[str, ...] | None = None  # conductor.store.TLSFiles: (ca, cert, key, server name)
    http: str = ""  # HOST:PORT of the node's web UI, HTTP API and /metrics ("": none); conductor.web.child
    http_cert: str = ""  # with http_key: serve HTTPS
    http_key: str = ""

    def node_name(self) -> str:
        return self.name or socket.gethostname().split(".")[0]
