"""A laptop cluster's member on loopback, real etcd with TLS: who gets in, join tokens and their
expiry, etcd's membership calls, and the join exchange over a pinned TLS connection."""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from conductor import cluster, jointoken, members, pki
from conductor.clusterdir import ClusterDir, ClusterState
from conductor.errors import StoreError
from conductor.join import JoinRefused, Joins, JoinServer, request_join
from conductor.keys import Keys
from conductor.memberetcd import MemberEtcd
from conductor.store import Store, TLSFiles
from harness import wait_for


def three_free_ports() -> int:
    """A port p with p+1 and p+2 free too (client, peer, join)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + 2 >= 65536 or base in (2379, 2380, 2381):
            continue
        try:
            for port in (base + 1, base + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue


@pytest.fixture
def member(tmp_path: Path) -> Iterator[tuple[ClusterDir, ClusterState]]:
    cdir = ClusterDir(tmp_path / "m1")
    state = cluster.found(cdir, "m1", "127.0.0.1", three_free_ports())
    etcd = MemberEtcd(cdir, state)
    etcd.start()
    yield cdir, state
    etcd.stop()


def test_only_a_client_certificate_of_this_clusters_ca_gets_in(member, tmp_path: Path):
    cdir, state = member
    with cluster.access(cdir, state) as store:
        wait_for(lambda: store.put("/k", b"v"), 20, 0.2, "the member takes writes")
        assert store.get("/k").value == b"v"  # type: ignore[union-attr]
    with Store(state.local_endpoint(), timeout=2) as plain, pytest.raises(StoreError):
        plain.get("/k")  # no TLS at all
    other = ClusterDir(tmp_path / "other")
    cluster.found(other, "x", "127.0.0.1", 1)  # another cluster's CA and client certificate
    foreign = TLSFiles(str(cdir.path("ca.crt")), str(other.path("client.crt")), str(other.path("client.key")),
                       pki.CLUSTER_NAME)
    with Store(state.local_endpoint(), timeout=2, tls=foreign) as intruder, pytest.raises(StoreError):
        intruder.get("/k")


def test_a_token_is_accepted_with_its_secret_until_it_expires(member):
    cdir, state = member
    keys = Keys("/tok/")
    with cluster.access(cdir, state) as store:
        wait_for(lambda: store.members(), 20, 0.2, "the member answers")
        token = cluster.new_token(store, keys, cdir, state, ttl=2)
        assert token.ca_hash == pki.fingerprint(cdir.read("ca.crt"))
        assert jointoken.verify(store, keys, token.token_id, token.secret)
        assert not jointoken.verify(store, keys, token.token_id, "0" * 32)
        assert not jointoken.verify(store, keys, "ffffff", token.secret)
        assert token.secret not in store.get(keys.cluster_token(token.token_id)).value.decode()  # type: ignore[union-attr]
        wait_for(lambda: not jointoken.verify(store, keys, token.token_id, token.secret), 15, 0.2, "expired")


def test_membership_add_a_learner_promotion_refused_until_it_runs_remove(member):
    cdir, state = member
    with cluster.access(cdir, state) as store:
        wait_for(lambda: store.members(), 20, 0.2, "the member answers")
        (me,) = store.members()
        assert (me["name"], me["learner"]) == ("m1", False)
        learner = store.member_add(["https://127.0.0.9:1"], learner=True)
        listed = {m["id"]: m for m in store.members()}
        assert listed[learner["id"]]["learner"] and listed[learner["id"]]["name"] == ""
        with pytest.raises(StoreError):
            store.member_promote(learner["id"])  # it never started, so it cannot have caught up
        with pytest.raises(StoreError, match="only voting member"):
            members.remove(store, me["id"])
        rows = {r["id"]: r for r in members.health(store)}
        assert rows[me["id"]]["leader"] and rows[me["id"]]["lag"] == 0
        assert rows[learner["id"]]["error"] == "not started"
        store.member_remove(learner["id"])
        store.member_remove(learner["id"])  # gone already: not an error
        assert [m["id"] for m in store.members()] == [me["id"]]


def test_the_join_exchange_pins_the_ca_checks_the_secret_and_adds_a_learner(member):
    cdir, state = member
    keys = Keys("/join/")
    with cluster.access(cdir, state) as store:
        wait_for(lambda: store.members(), 20, 0.2, "the member answers")
        server = JoinServer(Joins(cdir, state, store, keys))
        server.start()
        try:
            token = cluster.new_token(store, keys, cdir, state)
            csr = pki.make_csr(pki.new_key(), "m2")

            def join(t: jointoken.Token, name: str = "m2", address: str = "127.0.0.2") -> dict:
                return request_join(t, name, address, 40000, csr, csr)

            with pytest.raises(JoinRefused, match="wrong or has expired"):
                join(jointoken.Token(token.token_id, "0" * 32, token.ca_hash, token.host, token.port))
            with pytest.raises(JoinRefused, match="not the one the token names"):
                join(jointoken.Token(token.token_id, token.secret, "f" * 64, token.host, token.port))
            with pytest.raises(JoinRefused, match="not an IP address"):
                join(token, address="somewhere")
            assert len(store.members()) == 1  # nothing was added by a refused join

            answer = join(token)
            assert pki.issued_by(answer["member_cert"].encode(), cdir.read("ca.crt"))
            cert = x509.load_pem_x509_certificate(answer["member_cert"].encode())
            assert "127.0.0.2" in {str(ip) for ip in cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)}
            assert answer["initial_cluster"] == f"m1={state.peer_url()},m2=https://127.0.0.2:40001"
            added = {m["id"]: m for m in store.members()}[answer["member_id"]]
            assert added["learner"] and added["peer_urls"] == ["https://127.0.0.2:40001"]
            with pytest.raises(JoinRefused, match="is taken"):
                join(token, name="m1", address="127.0.0.3")
            again = join(token)  # a join that never started its member may be retried
            assert again["member_id"] != answer["member_id"] and len(store.members()) == 2
        finally:
            server.stop()
