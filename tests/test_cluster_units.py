"""Pure rules of a laptop cluster, without etcd: certificates, tokens, membership helpers, the
learner fields added to etcd's protocol, the on-disk state, etcd's command line."""
from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from conductor import etcdpb, jointoken, members, pki
from conductor.clusterdir import ClusterDir, ClusterState
from conductor.errors import InvalidSpec
from conductor.memberetcd import etcd_args


def sans(cert_pem: bytes) -> set[str]:
    ext = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return {str(v) for v in ext.value.get_values_for_type(x509.IPAddress)} | \
        set(ext.value.get_values_for_type(x509.DNSName))


def test_a_member_certificate_is_signed_by_the_ca_for_the_names_the_signer_chose():
    ca, ca_key = pki.create_ca("c1")
    key = pki.new_key()
    cert = pki.sign(ca, ca_key, pki.make_csr(key, "evil.example"), "m2", pki.member_names("10.77.0.2"), server=True)
    assert pki.issued_by(cert, ca)
    assert sans(cert) == {"10.77.0.2", "127.0.0.1", "localhost", pki.CLUSTER_NAME}
    other_ca, _ = pki.create_ca("c2")
    assert not pki.issued_by(cert, other_ca)
    usages = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u._name for u in usages} == {"serverAuth", "clientAuth"}


def test_a_client_certificate_cannot_serve():
    ca, ca_key = pki.create_ca("c1")
    cert = pki.sign(ca, ca_key, pki.make_csr(pki.new_key(), "x"), "conductor", [], server=False)
    usages = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [u._name for u in usages] == ["clientAuth"]


def test_a_csr_that_is_not_one_or_whose_signature_fails_is_refused():
    ca, ca_key = pki.create_ca("c1")
    with pytest.raises(InvalidSpec, match="csr"):
        pki.sign(ca, ca_key, b"not a csr", "m", [], server=True)
    csr = bytearray(pki.make_csr(pki.new_key(), "m"))
    body = csr.index(b"\n") + 40  # flip a character inside the base64 body: the signature breaks
    csr[body] = ord("A") if csr[body] != ord("A") else ord("B")
    with pytest.raises(InvalidSpec):
        pki.sign(ca, ca_key, bytes(csr), "m", [], server=True)


def test_the_fingerprint_is_the_sha256_of_the_der_form():
    ca, _ = pki.create_ca("c1")
    fp = pki.fingerprint(ca)
    assert len(fp) == 64 and fp == pki.fingerprint(ca) and fp != pki.fingerprint(pki.create_ca("c1")[0])
    with pytest.raises(InvalidSpec, match="certificate"):
        pki.fingerprint(b"junk")


def test_private_files_are_written_0600(tmp_path: Path):
    pki.write_private(tmp_path / "d" / "k.key", b"secret")
    assert stat.S_IMODE((tmp_path / "d" / "k.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    assert (tmp_path / "d" / "k.key").read_bytes() == b"secret"


def test_a_token_prints_and_parses_back():
    token = jointoken.new("a" * 64, "10.77.0.1", 2381)
    assert jointoken.parse(str(token)) == token
    v6 = jointoken.Token("0a0b0c", "1" * 32, "b" * 64, "fd00::1", 2381)
    assert str(v6).endswith("@[fd00::1]:2381") and jointoken.parse(str(v6)) == v6
    assert jointoken.new("a" * 64, "h", 1).secret != token.secret


@pytest.mark.parametrize("text", ["", "garbage", "0a0b0c.short.aaaa@h:1", "0a0b0c." + "1" * 32 + "." + "a" * 64,
                                  "0a0b0c." + "1" * 32 + "." + "a" * 64 + "@h:99999",
                                  "0A0B0C." + "1" * 32 + "." + "a" * 64 + "@h:1"])
def test_what_is_not_a_token_is_refused_naming_the_token(text: str):
    with pytest.raises(InvalidSpec) as info:
        jointoken.parse(text)
    assert info.value.field == "token"


def test_only_the_secrets_hash_is_what_etcd_keeps():
    assert jointoken.secret_hash("s") != "s" and len(jointoken.secret_hash("s")) == 64


def test_membership_helpers():
    found = [{"id": 1, "name": "m1", "peer_urls": ["https://10.0.0.1:2380"], "client_urls": ["https://10.0.0.1:2379"],
              "learner": False},
             {"id": 2, "name": "", "peer_urls": ["https://10.0.0.2:2380"], "client_urls": [], "learner": True}]
    assert members.client_endpoints(found) == ["10.0.0.1:2379"]
    assert members.initial_cluster(found) == "m1=https://10.0.0.1:2380"
    assert members.endpoint_of("https://[fd00::1]:2379/") == "[fd00::1]:2379"


def test_the_protocol_knows_learners_as_etcd_3_4_does():
    request = etcdpb.MemberAddRequest(peerURLs=["https://a:2380"], isLearner=True)
    # field 2 of MemberAddRequest, varint 1: etcd's own encoding of isLearner
    assert b"\x10\x01" in request.SerializeToString()
    listed = etcdpb.MemberListResponse(members=[{"ID": 7, "isLearner": True}])
    assert b"\x08\x07\x28\x01" in listed.SerializeToString()  # field 5 of Member, as in etcd 3.4
    assert etcdpb.MemberListResponse.FromString(listed.SerializeToString()).members[0].isLearner
    assert etcdpb.MemberPromoteRequest(ID=5).SerializeToString() == b"\x08\x05"


def test_cluster_state_round_trips_and_names_its_urls(tmp_path: Path):
    cdir = ClusterDir(tmp_path)
    state = ClusterState("c1", "m1", "10.77.0.1", 2379, 2380, 2381, "m1=https://10.77.0.1:2380", peers=["x:1"])
    cdir.save(state)
    assert cdir.load() == state and cdir.exists()
    assert (state.client_url(), state.peer_url()) == ("https://10.77.0.1:2379", "https://10.77.0.1:2380")
    assert ClusterState("c", "m", "fd00::1").peer_url() == "https://[fd00::1]:2380"
    assert stat.S_IMODE((tmp_path / "cluster" / "state.json").stat().st_mode) == 0o600


def test_the_member_etcd_checks_client_and_peer_certificates(tmp_path: Path):
    cdir = ClusterDir(tmp_path)
    args = etcd_args("etcd", cdir, ClusterState("c1", "m1", "10.77.0.1", initial_cluster="m1=https://10.77.0.1:2380"))
    assert "--client-cert-auth" in args and "--peer-client-cert-auth" in args
    urls = args[args.index("--listen-client-urls") + 1].split(",")
    assert urls == ["https://10.77.0.1:2379", "https://127.0.0.1:2379"]
    assert all(not a.startswith("http://") for a in args)
    assert ipaddress.ip_address("10.77.0.1")
