"""A secured etcd: TLS with client certificates, and etcd users with expiring tokens.

Certificates are made here (a CA, a server certificate for 127.0.0.1, a client certificate, and a
second CA that signed nothing etcd trusts); etcds are real, started with ``--client-cert-auth`` or
with auth enabled through etcdctl; conductors are real processes.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conductor.client import Client
from conductor.clock import Clock
from conductor.clockwatch import etcd_offset
from conductor.credentials import Credentials, wants_tls
from conductor.errors import InvalidSpec
from harness import EtcdServer, Node, TlsFiles, conductor_cli, wait_for

JOB = "name: hello\nlayers:\n  - tasks:\n      - cmd: [echo, hello]\n"


# ---- certificates ------------------------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[str, str]:
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path.with_suffix(".pem")), str(path.with_suffix(".key"))


def _ca(path: Path, common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write(path, key, cert)
    return key, cert


def _leaf(path: Path, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], common: str,
          server: bool) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(ca[1].subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
    if server:  # an IP SAN: the endpoints are 127.0.0.1:port
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    return _write(path, key, builder.sign(ca[0], hashes.SHA256()))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsFiles, str]:
    """The files of a TLS etcd, and a CA that did not sign its certificate."""
    base = tmp_path_factory.mktemp("certs")
    ca = _ca(base / "ca", "conductor test CA")
    _ca(base / "other-ca", "some other CA")
    server_cert, server_key = _leaf(base / "server", ca, "etcd", server=True)
    client_cert, client_key = _leaf(base / "client", ca, "conductor", server=False)
    return TlsFiles(str(base / "ca.pem"), server_cert, server_key, client_cert, client_key), str(base / "other-ca.pem")


@pytest.fixture(scope="module")
def tls_etcd(certs: tuple[TlsFiles, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd-tls") / "data", "tls", tls=certs[0]).start()
    yield server
    server.stop()


def _tls_args(files: TlsFiles) -> list[str]:
    return ["--cacert", files.ca, "--cert", files.client_cert, "--key", files.client_key]


def _one_clear_line(result: subprocess.CompletedProcess[str], endpoint: str, *reason: str) -> str:
    """The command failed with one line naming the endpoint and the reason, no traceback or gRPC dump."""
    assert result.returncode not in (0, 1), result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ") and endpoint in line, line
    assert all(word in line for word in reason), line
    assert "Traceback" not in result.stderr and "_InactiveRpcError" not in result.stderr, result.stderr
    return line


# ---- pure rules -------------------------------------------------------------------------------------


def test_which_endpoints_mean_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    none, with_ca = Credentials(), Credentials(cacert=str(ca))
    assert wants_tls("https://a:1", none)  # https always means TLS, with the system roots
    assert not wants_tls("http://a:1", none) and not wants_tls("a:1", none)
    assert wants_tls("a:1,b:2", with_ca)  # TLS files make a bare host:port TLS
    with pytest.raises(InvalidSpec, match="http://a:1"):
        wants_tls("http://a:1", with_ca)  # a plaintext scheme named, with TLS files: say so
    with pytest.raises(InvalidSpec, match="one scheme"):
        wants_tls("https://a:1,http://b:2", none)


def test_credentials_from_options_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("first\n")
    monkeypatch.setenv("CONDUCTOR_USER", "alice:inline")
    creds = Credentials.from_env()
    assert (creds.user, creds.read_password(), creds.auth) == ("alice", "inline", True)
    creds = Credentials.from_env(user="bob", password_file=str(secret))
    assert (creds.user, creds.read_password()) == ("bob", "first")
    secret.write_text("second\n")  # read again at each authentication: a changed password is used
    assert creds.read_password() == "second"
    assert Credentials.from_config(creds.config()) == creds  # what the supervisor process gets
    monkeypatch.delenv("CONDUCTOR_USER")
    assert not Credentials.from_env(user="carol").auth  # no password: only whose jobs
    with pytest.raises(InvalidSpec, match="--cacert"):
        Credentials.from_env(cacert=str(tmp_path / "missing.pem"))
    with pytest.raises(InvalidSpec, match="go together"):
        Credentials.from_env(cert=str(secret))


# ---- TLS -------------------------------------------------------------------------------------------------


def test_job_runs_end_to_end_over_tls(tls_etcd: EtcdServer, certs: tuple[TlsFiles, str], start_nodes,
                                      namespace: str, tmp_path: Path) -> None:
    files = certs[0]
    (node,) = start_nodes(tls_etcd.url, 1, extra=_tls_args(files))
    job = tmp_path / "hello.yaml"
    job.write_text(JOB)
    common = ["--etcd", tls_etcd.url, "--namespace", namespace, *_tls_args(files)]
    posted = conductor_cli("post", str(job), "--wait", "--json", *common)
    assert posted.returncode == 0, posted.stderr
    assert '"COMPLETED"' in posted.stdout
    # the environment variables work as the options do, with a bare host:port; a password for an
    # etcd whose auth is off is not an error (as with etcdctl)
    env = {"CONDUCTOR_CACERT": files.ca, "CONDUCTOR_CERT": files.client_cert, "CONDUCTOR_KEY": files.client_key,
           "CONDUCTOR_USER": "alice", "CONDUCTOR_PASSWORD": "unused"}
    listed = conductor_cli("nodes", "--json", "--etcd", tls_etcd.endpoint, "--namespace", namespace, env=env)
    assert listed.returncode == 0 and node.name in listed.stdout, listed.stderr
    assert "Traceback" not in node.log()
    # the node's clock reads etcd's Date header over https, with the same CA and client certificate
    tls = Credentials(cacert=files.ca, cert=files.client_cert, key=files.client_key).ssl_context()
    assert etcd_offset("127.0.0.1", tls_etcd.client_port, Clock(), tls=tls) is not None
    assert etcd_offset("127.0.0.1", tls_etcd.client_port, Clock()) is None  # plain http gets nothing


def test_wrong_ca_is_one_clear_line(tls_etcd: EtcdServer, certs: tuple[TlsFiles, str]) -> None:
    files, other_ca = certs
    result = conductor_cli("show", "--etcd", tls_etcd.url, "--cacert", other_ca, "--cert", files.client_cert,
                           "--key", files.client_key, timeout=30)
    _one_clear_line(result, tls_etcd.endpoint, "TLS", "certificate verify failed")
    assert result.returncode == 13


def test_missing_client_certificate_is_one_clear_line(tls_etcd: EtcdServer, certs: tuple[TlsFiles, str]) -> None:
    result = conductor_cli("show", "--etcd", tls_etcd.url, "--cacert", certs[0].ca, timeout=30)
    _one_clear_line(result, tls_etcd.endpoint, "TLS", "CERTIFICATE")
    assert result.returncode == 13


# ---- etcd users -----------------------------------------------------------------------------------------

ROOT_PW = "root-secret"
NS = "/secure/"


def _etcdctl(server: EtcdServer, *args: str, root: bool = True, input_text: str | None = None) -> str:
    auth = ["--user", f"root:{ROOT_PW}"] if root else []
    done = subprocess.run(["etcdctl", "--endpoints", server.url, *auth, *args], capture_output=True, text=True,
                          env={**os.environ, "ETCDCTL_API": "3"}, timeout=30, input=input_text)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def auth_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """etcd with auth on and simple tokens that expire after 2 s unused: root; alice may use
    /secure/; bob only /elsewhere/."""
    server = EtcdServer(tmp_path / "etcd-auth" / "data", "auth",
                        extra=["--auth-token", "simple", "--auth-token-ttl", "2"]).start()
    _etcdctl(server, "user", "add", f"root:{ROOT_PW}", root=False)
    _etcdctl(server, "user", "grant-role", "root", "root", root=False)
    for user, prefix in (("alice", NS), ("bob", "/elsewhere/")):
        _etcdctl(server, "role", "add", f"{user}-role", root=False)
        _etcdctl(server, "role", "grant-permission", f"{user}-role", "--prefix=true", "readwrite", prefix,
                 root=False)
        _etcdctl(server, "user", "add", f"{user}:{user}-pw", root=False)
        _etcdctl(server, "user", "grant-role", user, f"{user}-role", root=False)
    _etcdctl(server, "auth", "enable", root=False)
    yield server
    server.stop()


def test_wrong_password_and_missing_permission_are_one_clear_line(auth_etcd: EtcdServer, tmp_path: Path) -> None:
    common = ["--etcd", auth_etcd.endpoint, "--namespace", NS]
    wrong = conductor_cli("show", *common, "--user", "alice:not-her-password", timeout=30)
    line = _one_clear_line(wrong, auth_etcd.endpoint, "alice", "wrong user name or password")
    assert wrong.returncode == 11, line
    denied = conductor_cli("show", *common, "--user", "bob:bob-pw", timeout=30)
    line = _one_clear_line(denied, auth_etcd.endpoint, "denied", "bob", "permission denied")
    assert denied.returncode == 10, line
    anonymous = conductor_cli("show", *common, "--user", "alice", timeout=30)  # no password, no terminal
    _one_clear_line(anonymous, auth_etcd.endpoint, "requires a user")
    secret = tmp_path / "pw"
    secret.write_text("alice-pw\n")
    fine = conductor_cli("show", *common, "--user", "alice", "--password-file", str(secret), timeout=30)
    assert fine.returncode == 0, fine.stderr
    node = conductor_cli("run", *common, "--user", "alice:not-her-password", "--data-dir", str(tmp_path / "n"),
                         timeout=60)
    _one_clear_line(node, auth_etcd.endpoint, "alice", "wrong user name or password")
    asked: list[str] = []  # on a terminal, --user NAME without a password: asked when etcd wants one

    def prompt(name: str) -> str:
        asked.append(name)
        return "alice-pw"

    creds = Credentials(user="alice", prompt=prompt)
    with Client(etcd=auth_etcd.endpoint, namespace=NS, credentials=creds) as client:
        assert client.jobs() == [] and asked == ["alice"]


def test_conductor_carries_on_through_token_expiry_password_change_and_restart(
        auth_etcd: EtcdServer, tmp_path: Path, nodes: list[Node]) -> None:
    secret = tmp_path / "alice.pw"
    secret.write_text("alice-pw\n")
    node = Node(auth_etcd.endpoint, NS, "n0", tmp_path / "nodes",
                extra=["--user", "alice", "--password-file", str(secret)]).start()
    nodes.append(node)
    node.wait_ready()
    job = tmp_path / "hello.yaml"
    job.write_text(JOB)
    post = ["post", str(job), "--wait", "--timeout", "60", "--etcd", auth_etcd.endpoint, "--namespace", NS,
            "--user", "alice", "--password-file", str(secret)]
    # a simple token expires once unused for its TTL (2 s; etcd checks each second). A busy node
    # uses its own all the time, so a client that waits past the TTL is what meets an expired one
    with Client(etcd=auth_etcd.endpoint, namespace=NS,
                credentials=Credentials(user="alice", password_file=str(secret))) as client:
        assert client.user == "alice"
        first = client.wait(client.post(str(job)), timeout=60)
        token = client.store._token
        time.sleep(3.5)  # the TTL is a time, not a condition: nothing to watch for
        second = client.wait(client.post(str(job)), timeout=60)
        assert client.store._token and client.store._token != token  # it authenticated again
        assert first["state"] == second["state"] == "COMPLETED"
    # the password changes (the file first, then etcd), and a restart of etcd forgets every token
    secret.write_text("alice-new-pw\n")
    _etcdctl(auth_etcd, "user", "passwd", "alice", "--interactive=false", input_text="alice-new-pw\n")
    renewals = node.log().count("authenticating again")
    auth_etcd.stop()
    auth_etcd.start(wait=False)
    wait_for(lambda: node.log().count("authenticating again") > renewals, 30, 0.2, "a renewal after the restart")
    done = conductor_cli(*post)
    assert done.returncode == 0, done.stderr + node.log()
    assert node.alive()
    bad = [line for line in node.log().splitlines() if " ERROR " in line or " CRITICAL " in line
           or "Traceback" in line]
    assert not bad, node.log()
