"""A laptop cluster: found one (``conductor run --cluster``), join one (``conductor join``), run a
member with its conductor, leave, and reach it from the command line. See docs/cluster.md.

:class:`ClusterRun` is what ``conductor run --cluster`` wraps around the node: it starts this
machine's etcd member (promoting it if it joined as a learner), serves the join endpoint, prints
a join command, and on the way out, if ``conductor leave`` asked, removes this member from etcd
and forgets the cluster. Errors: ClusterStateError, JoinRefused, EtcdMissing, InvalidSpec
(``--advertise``), StoreError.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from . import jointoken, members, pki
from .clusterdir import CLIENT_PORT, ClusterDir, ClusterState
from .errors import InvalidSpec, StoreError, StoreUnavailable
from .join import Joins, JoinServer, request_join
from .keys import Keys
from .memberetcd import MemberEtcd
from .store import Store, TLSFiles

log = logging.getLogger("conductor.cluster")


def detect_address() -> str:
    """This machine's network address: the one the default route leaves from (a UDP connect sends
    nothing), else the first non-loopback IPv4 address. InvalidSpec when there is none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never reached, only routed
            address = s.getsockname()[0]
            if not address.startswith("127."):
                return address
        except OSError:
            pass
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    raise InvalidSpec("--advertise", "no network address found on this machine; give one")


def check_address(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        raise InvalidSpec("--advertise", f"{address!r} is not an IP address") from None


def found(cdir: ClusterDir, name: str, advertise: str, client_port: int = CLIENT_PORT) -> ClusterState:
    """Create a new cluster here: its CA, this machine's certificates, the state of its first member."""
    cluster_id = secrets.token_hex(4)
    ca, ca_key = pki.create_ca(cluster_id)
    cdir.write_cert("ca.crt", ca)
    cdir.write_key("ca.key", ca_key)
    state = ClusterState(cluster_id, name, advertise, client_port, client_port + 1, client_port + 2)
    state.initial_cluster = f"{name}={state.peer_url()}"
    _own_certs(cdir, name, advertise, lambda csr, cn, sans, server: pki.sign(ca, ca_key, csr, cn, sans, server))
    cdir.save(state)
    return state


def _own_certs(cdir: ClusterDir, name: str, advertise: str, signer: Callable[..., bytes]) -> None:
    for kind, cn, sans, server in (("member", name, pki.member_names(advertise), True),
                                   ("client", "conductor", [], False)):
        key = pki.new_key()
        cdir.write_key(f"{kind}.key", key)
        cdir.write_cert(f"{kind}.crt", signer(pki.make_csr(key, cn), cn, sans, server))


def join(cdir: ClusterDir, token_text: str, name: str, advertise: str, client_port: int = CLIENT_PORT) -> ClusterState:
    """The joiner's side: prove the token, get certificates, record how this member starts. The
    member is then a learner in etcd until :class:`ClusterRun` promotes it. JoinRefused if refused."""
    if cdir.exists():
        raise InvalidSpec("--data-dir", f"{cdir.root} already belongs to a cluster: start it with "
                                        "`conductor run --cluster`, or `conductor leave` first")
    token = jointoken.parse(token_text)
    keys = {kind: pki.new_key() for kind in ("member", "client")}
    answer = request_join(token, name, advertise, client_port, pki.make_csr(keys["member"], name),
                          pki.make_csr(keys["client"], "conductor"))
    for kind in ("member", "client"):
        cdir.write_key(f"{kind}.key", keys[kind])
        cdir.write_cert(f"{kind}.crt", answer[f"{kind}_cert"].encode())
    cdir.write_cert("ca.crt", answer["ca"].encode())
    cdir.write_key("ca.key", answer["ca_key"].encode())
    state = ClusterState(answer["cluster_id"], name, advertise, client_port, client_port + 1, client_port + 2,
                         initial_cluster=answer["initial_cluster"], initial_state="existing",
                         member_id=int(answer["member_id"]), promoted=False, peers=list(answer["peers"]))
    cdir.save(state)
    return state


def access(cdir: ClusterDir, state: ClusterState, endpoints: list[str] | None = None, timeout: float = 5.0) -> Store:
    """A Store on this cluster with this machine's client certificate (default: its own member)."""
    return Store(endpoints or [state.local_endpoint()], timeout=timeout, tls=cdir.client_tls())


def new_token(store: Store, keys: Keys, cdir: ClusterDir, state: ClusterState,
              ttl: float = jointoken.DEFAULT_TTL) -> jointoken.Token:
    """Issue a join token for this machine's join endpoint, valid ``ttl`` seconds."""
    token = jointoken.new(pki.fingerprint(cdir.read("ca.crt")), state.advertise, state.join_port)
    jointoken.issue(store, keys, token, ttl)
    return token


class ClusterRun:
    """This machine's member and join endpoint, around a running conductor (a context manager)."""

    def __init__(self, cdir: ClusterDir, state: ClusterState, keys: Keys, say: Callable[[str], None] = print):
        self.cdir = cdir
        self.state = state
        self.keys = keys
        self.say = say
        self.etcd = MemberEtcd(cdir, state)
        self.store: Store | None = None
        self.server: JoinServer | None = None

    @property
    def tls(self) -> TLSFiles:
        return self.cdir.client_tls()

    def __enter__(self) -> "ClusterRun":
        self.cdir.path("leaving").unlink(missing_ok=True)
        self.etcd.start()
        stop: list[int] = []
        # until the node installs its own handlers, a signal must still stop this machine's etcd
        previous = {sig: signal.signal(sig, lambda signum, frame: stop.append(signum))
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._settle(lambda: bool(stop))
        except BaseException:
            self.etcd.stop()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self

    def _settle(self, stopped: Callable[[], bool]) -> None:
        if not self.state.promoted:
            with access(self.cdir, self.state, self.state.peers) as peers:
                if not members.promote_when_caught_up(peers, self.state.member_id, stop=stopped):
                    raise StoreError("this machine's etcd member did not catch up with the cluster in time "
                                     f"to be promoted from learner; see {self.cdir.path('etcd.log')}")
            self.state.promoted = True
            self.cdir.save(self.state)
        self.store = access(self.cdir, self.state, timeout=10.0)
        self._wait_for_quorum(stopped)
        me = next((m for m in self.store.members() if self.state.peer_url() in m["peer_urls"]), None)
        if me is None:
            raise StoreError("this machine is no longer a member of its cluster (removed by `conductor leave`?); "
                             f"remove {self.cdir.root} and join again")
        self.state.member_id = me["id"]
        self.state.peers = self.endpoints()[1:]  # for `conductor leave` when this member is down
        self.cdir.save(self.state)
        self.server = JoinServer(Joins(self.cdir, self.state, self.store, self.keys))
        self.server.start()
        self.cdir.write_file("run.pid", str(os.getpid()).encode())
        try:
            token = new_token(self.store, self.keys, self.cdir, self.state)
        except StoreError as exc:
            self.say(f"cluster {self.state.cluster_id}: member {self.state.name} at {self.state.advertise}; "
                     f"no join token now ({exc}); `conductor token` prints one")
            return
        self.say(f"cluster {self.state.cluster_id}: member {self.state.name} at {self.state.advertise}; "
                 f"to add a machine run there (valid 24h): conductor join {token}")

    def _wait_for_quorum(self, stopped: Callable[[], bool]) -> None:
        """Wait until this member serves linearizable reads, i.e. a quorum of the cluster is up (a
        whole cluster restarting: the first machine back waits for the others). A signal stops
        the wait (StoreUnavailable)."""
        assert self.store is not None
        said = 0.0
        while True:
            try:
                self.store.revision()  # a linearizable read: answered only with a leader and a quorum
                return
            except StoreError as exc:
                if stopped():
                    raise StoreUnavailable("stopped while waiting for a quorum of the cluster") from None
                if time.monotonic() - said > 10:
                    said = time.monotonic()
                    self.say(f"waiting for a quorum of cluster {self.state.cluster_id}'s members "
                             f"(start the others with `conductor run --cluster`): {exc}")
            time.sleep(0.5)

    def endpoints(self) -> list[str]:
        """This member first, then the other started members (requests fail over between them)."""
        assert self.store is not None
        mine = self.state.local_endpoint()
        others = [e for e in members.client_endpoints(self.store.members())
                  if e != f"{self.state.advertise}:{self.state.client_port}"]
        return [mine, *others]

    def __exit__(self, *exc: Any) -> None:
        if self.server:
            self.server.stop()
        leaving = self.cdir.path("leaving").exists()
        try:
            if leaving:
                self._remove_self()
        finally:
            if self.store:
                self.store.close()
            self.etcd.stop()
            self.cdir.path("run.pid").unlink(missing_ok=True)
        if leaving:
            forget(self.cdir)
            self.say(f"member {self.state.name} left cluster {self.state.cluster_id}")

    def _remove_self(self) -> None:
        assert self.store is not None
        others = [e for e in self.endpoints()[1:]]
        with access(self.cdir, self.state, others or None) as store:
            members.remove(store, self.state.member_id)


def forget(cdir: ClusterDir) -> None:
    """Delete this machine's cluster directory (its etcd data and certificates)."""
    shutil.rmtree(cdir.root, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def leave(cdir: ClusterDir, timeout: float = 120.0) -> str:
    """Take this machine out of its cluster. With a running ``conductor run --cluster``: ask it (a
    ``leaving`` file and SIGTERM, so it hands its tasks back first), wait until it is gone. Without
    one (or if it stopped without removing its member): remove the member through the others.
    Returns what was done; StoreError if it failed (the cluster directory is then kept)."""
    state = cdir.load()
    pid = cdir.run_pid()
    if pid is not None:
        cdir.write_file("leaving", b"")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _running(pid) and cdir.exists():
            time.sleep(0.2)
        if not cdir.exists():  # it removed its member and forgot the cluster; it exits in a moment
            return f"member {state.name} handed its tasks back and left cluster {state.cluster_id}"
        if _running(pid):
            raise StoreError(f"the conductor (pid {pid}) did not leave within {timeout:.0f}s; see its log")
    with access(cdir, state, state.peers or None) as store:
        me = next((m for m in store.members() if state.peer_url() in m["peer_urls"]), None)
        if me is not None:
            members.remove(store, me["id"])
    forget(cdir)
    return f"member {state.name} left cluster {state.cluster_id}"


def local_store(data_dir: Path, timeout: float = 5.0) -> Store | None:
    """For the command line: a Store on the cluster this machine belongs to, or None if none."""
    cdir = ClusterDir(data_dir)
    if not cdir.exists():
        return None
    return access(cdir, cdir.load(), timeout=timeout)
