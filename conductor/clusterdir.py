"""A machine's part of a laptop cluster on disk: ``<data-dir>/cluster/``.

Files: ``ca.crt`` and ``ca.key`` (the cluster CA: every machine holds it, since every machine
serves joins), ``member.crt``/``member.key`` (this machine's etcd server and peer certificate),
``client.crt``/``client.key`` (the conductor's and the command line's etcd client certificate),
``state.json`` (what this member is: cluster id, name, address, ports, how etcd starts),
``member-data/`` (etcd's data), ``etcd.log``, ``run.pid`` (the running ``conductor run --cluster``)
and ``leaving`` (a request from ``conductor leave`` to that process). Keys are 0600, the directory
0700. Writes of state.json are atomic (write and rename).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConductorError
from .pki import CLUSTER_NAME, write_private
from .store import TLSFiles

CLIENT_PORT = 2379


class ClusterStateError(ConductorError):
    """The cluster directory is missing or its state cannot be read."""


@dataclass
class ClusterState:
    cluster_id: str
    name: str
    advertise: str
    client_port: int = CLIENT_PORT
    peer_port: int = CLIENT_PORT + 1
    join_port: int = CLIENT_PORT + 2
    initial_cluster: str = ""  # etcd's --initial-cluster for the first start of this member
    initial_state: str = "new"  # "new" for the founding machine, "existing" for a joined one
    member_id: int = 0
    promoted: bool = True  # False while a joined member is still a learner
    peers: list[str] = field(default_factory=list)  # client endpoints of the members known at join

    def client_url(self) -> str:
        return f"https://{_host(self.advertise)}:{self.client_port}"

    def peer_url(self) -> str:
        return f"https://{_host(self.advertise)}:{self.peer_port}"

    def local_endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class ClusterDir:
    def __init__(self, data_dir: Path):
        self.root = data_dir / "cluster"

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self) -> bool:
        return self.path("state.json").exists()

    def load(self) -> ClusterState:
        """The saved state; ClusterStateError when there is none or it is unreadable."""
        try:
            data = json.loads(self.path("state.json").read_text())
            return ClusterState(**data)
        except FileNotFoundError:
            raise ClusterStateError(f"{self.root} holds no cluster: start one with `conductor run --cluster` "
                                    "or join one with `conductor join TOKEN`") from None
        except (OSError, ValueError, TypeError) as exc:
            raise ClusterStateError(f"{self.path('state.json')} is unreadable: {exc}") from None

    def save(self, state: ClusterState) -> None:
        write_private(self.path("state.json"), json.dumps(asdict(state), indent=1).encode())

    def write_key(self, name: str, data: bytes) -> None:
        write_private(self.path(name), data)

    def write_cert(self, name: str, data: bytes) -> None:
        write_private(self.path(name), data)  # certificates are not secret, but nobody else needs them

    def write_file(self, name: str, data: bytes) -> None:
        """run.pid, leaving: small markers, written atomically like the rest."""
        write_private(self.path(name), data)

    def read(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def client_tls(self) -> TLSFiles:
        """The conductor's TLS material; server certificates are checked for :data:`CLUSTER_NAME`,
        which every member certificate carries (a connection may go to any member)."""
        return TLSFiles(str(self.path("ca.crt")), str(self.path("client.crt")), str(self.path("client.key")),
                        CLUSTER_NAME)

    def run_pid(self) -> int | None:
        """The pid of the ``conductor run --cluster`` using this directory, if one is alive."""
        try:
            pid = int(self.path("run.pid").read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None
