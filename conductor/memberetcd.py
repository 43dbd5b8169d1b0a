"""This machine's etcd member of a laptop cluster: an etcd child process with client and peer TLS.

It listens for clients on the advertised address and on 127.0.0.1 (same port), for peers on the
advertised address, and checks client and peer certificates against the cluster CA
(``--client-cert-auth``, ``--peer-client-cert-auth``): nothing without a certificate of this
cluster can read, write or join. Raises :class:`conductor.errors.EtcdMissing` when etcd is not
installed, exits at once, or does not open its port in time.
"""
from __future__ import annotations

import shutil
import subprocess

from .clusterdir import ClusterDir, ClusterState
from .errors import EtcdMissing
from .localetcd import INSTALL_HINT, start_etcd, stop_process, wait_listening


def etcd_args(binary: str, cdir: ClusterDir, state: ClusterState) -> list[str]:
    """The etcd command line of this member (``--initial-*`` are ignored once it has data)."""
    p = cdir.path
    tls = ["--cert-file", str(p("member.crt")), "--key-file", str(p("member.key")),
           "--trusted-ca-file", str(p("ca.crt")), "--client-cert-auth",
           "--peer-cert-file", str(p("member.crt")), "--peer-key-file", str(p("member.key")),
           "--peer-trusted-ca-file", str(p("ca.crt")), "--peer-client-cert-auth"]
    listen = ",".join(dict.fromkeys([state.client_url(), f"https://127.0.0.1:{state.client_port}"]))
    return [binary, "--name", state.name, "--data-dir", str(p("member-data")),
            "--listen-client-urls", listen,
            "--advertise-client-urls", state.client_url(),
            "--listen-peer-urls", state.peer_url(), "--initial-advertise-peer-urls", state.peer_url(),
            "--initial-cluster", state.initial_cluster, "--initial-cluster-state", state.initial_state,
            "--initial-cluster-token", f"conductor-{state.cluster_id}",
            "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h", *tls]


class MemberEtcd:
    def __init__(self, cdir: ClusterDir, state: ClusterState):
        self.cdir = cdir
        self.state = state
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 20.0) -> None:
        binary = shutil.which("etcd")
        if not binary:
            raise EtcdMissing(f"a cluster member needs the etcd binary: {INSTALL_HINT}")
        log_path = self.cdir.path("etcd.log")
        self.proc = start_etcd(etcd_args(binary, self.cdir, self.state), log_path)
        wait_listening(self.proc, self.state.client_port, wait, "this machine's etcd member", log_path)

    def stop(self) -> None:
        stop_process(self.proc)
