"""The join exchange of a laptop cluster: a small HTTPS endpoint on every ``--cluster`` machine,
and the joiner's side of it.

The joiner knows only the token (:mod:`conductor.jointoken`): the endpoint's address, the CA's
fingerprint and a secret. It first fetches the CA certificate over TLS without trusting anything
and checks its SHA-256 against the token (a wrong CA, say a machine in the middle, is refused
here); then it opens a new TLS connection that trusts only that CA and checks the endpoint's
certificate for the token's address, and there sends the secret, its name, its address and two
certificate requests. The serving machine checks the secret against etcd, signs a member and a
client certificate (names chosen by the server: the joiner's address, never what the CSR says),
adds the joiner to etcd as a learner and answers with the certificates, the CA (certificate and
key: every machine serves joins) and how to start etcd. Nothing travels in plaintext.

Errors: :class:`JoinRefused` (a refused or failed join: wrong or expired token, wrong CA, address
taken), raised by :func:`request_join`.
"""
from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import re
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import jointoken, members, pki
from .clusterdir import ClusterDir, ClusterState
from .errors import ConductorError, InvalidSpec, StoreError
from .exitcodes import Exit
from .keys import Keys
from .store import Store

log = logging.getLogger("conductor.join")

MAX_BODY = 64 * 1024
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class JoinRefused(ConductorError):
    """A join was refused (wrong or expired token, a CA that is not the token's) or failed."""

    exit_code = Exit.REFUSED


# ---- the serving side -----------------------------------------------------------------------------


class _Answer(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


def _check_request(body: dict[str, Any]) -> tuple[str, str, int]:
    name, address, port = str(body.get("name", "")), str(body.get("advertise", "")), body.get("client_port")
    if not NAME.match(name):
        raise _Answer(400, f"name {name!r}: letters, digits, '.', '_' and '-', at most 63")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise _Answer(400, f"advertise {address!r}: not an IP address") from None
    if not isinstance(port, int) or not 0 < port < 65534:
        raise _Answer(400, f"client_port {port!r}: not a port number")
    return name, address, port


class Joins:
    """What the endpoint does with a join request; holds the CA and a Store for etcd."""

    def __init__(self, cdir: ClusterDir, state: ClusterState, store: Store, keys: Keys):
        self.cdir = cdir
        self.state = state
        self.store = store
        self.keys = keys
        self._lock = threading.Lock()  # one membership change at a time from this machine

    def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        """Check, sign, add as a learner. Raises _Answer with the HTTP status and why."""
        if not jointoken.verify(self.store, self.keys, str(body.get("token", "")), str(body.get("secret", ""))):
            raise _Answer(403, "the join token is wrong or has expired (`conductor token` prints a new one)")
        name, address, port = _check_request(body)
        ca, ca_key = self.cdir.read("ca.crt"), self.cdir.read("ca.key")
        try:
            member_cert = pki.sign(ca, ca_key, str(body.get("member_csr", "")).encode(), name,
                                   pki.member_names(address), server=True)
            client_cert = pki.sign(ca, ca_key, str(body.get("client_csr", "")).encode(), "conductor", [], server=False)
        except InvalidSpec as exc:
            raise _Answer(400, str(exc)) from None
        probe = ClusterState(self.state.cluster_id, name, address, port, port + 1, port + 2)
        with self._lock:
            current = self._make_room(name, probe.peer_url())
            added = self._add(probe.peer_url())
        log.info("join: %s (%s) added to etcd as learner %x", name, address, added["id"])
        return {"ca": ca.decode(), "ca_key": ca_key.decode(), "member_cert": member_cert.decode(),
                "client_cert": client_cert.decode(), "cluster_id": self.state.cluster_id, "member_id": added["id"],
                "initial_cluster": ",".join(filter(None, [members.initial_cluster(current),
                                                          f"{name}={probe.peer_url()}"])),
                "peers": members.client_endpoints(current), "namespace": self.keys.namespace}

    def _add(self, peer_url: str) -> dict[str, Any]:
        # right after a removal (of a learner that never started) etcd 3.4 may answer an add with
        # NOT_FOUND ("member not found") once; the same add a second later is taken
        return members.patiently(lambda: self.store.member_add([peer_url], learner=True), also=("NOT_FOUND",))

    def _make_room(self, name: str, peer_url: str) -> list[dict[str, Any]]:
        """The members, after removing a learner of this address that never started (a join that
        failed half-way); refuses a name or address another member has."""
        current = self.store.members()
        for m in list(current):
            if peer_url in m["peer_urls"] and not m["name"]:
                self.store.member_remove(m["id"])
                current.remove(m)
            elif peer_url in m["peer_urls"]:
                raise _Answer(409, f"{peer_url} is already member {m['name']!r}: run `conductor leave` there first")
            elif m["name"] == name:
                raise _Answer(409, f"name {name!r} is taken by the member at {m['peer_urls']}; choose --name")
        return current


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("join endpoint: " + format, *args)

    def _send(self, status: int, payload: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/ca":
            self._send(200, self.server.joins.cdir.read("ca.crt"), "application/x-pem-file")
        else:
            self._send(404, b"{}", "application/json")

    def do_POST(self) -> None:  # noqa: N802
        try:
            if self.path != "/join":
                raise _Answer(404, "no such endpoint")
            size = int(self.headers.get("Content-Length") or 0)
            if not 0 < size <= MAX_BODY:
                raise _Answer(400, "the request body is missing or too large")
            body = json.loads(self.rfile.read(size))
            if not isinstance(body, dict):
                raise _Answer(400, "the request body is not a JSON object")
            answer, status = self.server.joins.handle(body), 200
        except _Answer as exc:
            answer, status = {"error": exc.message}, exc.status
        except ValueError:
            answer, status = {"error": "the request body is not JSON"}, 400
        except StoreError as exc:
            answer, status = {"error": f"etcd: {exc}"}, 503
        if status != 200:
            log.warning("join request from %s refused: %s", self.client_address[0], answer["error"])
        self._send(status, json.dumps(answer).encode(), "application/json")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    joins: Joins


class JoinServer:
    """The HTTPS join endpoint on ``advertise:join_port``, with the member certificate."""

    def __init__(self, joins: Joins):
        self.joins = joins
        self._server: _Server | None = None

    def start(self) -> None:
        state, cdir = self.joins.state, self.joins.cdir
        family = socket.AF_INET6 if ":" in state.advertise else socket.AF_INET
        _Server.address_family = family
        server = _Server((state.advertise, state.join_port), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cdir.path("member.crt")), str(cdir.path("member.key")))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.joins = self.joins
        self._server = server
        threading.Thread(target=server.serve_forever, name="join-endpoint", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# ---- the joining side -----------------------------------------------------------------------------


def fetch_ca(token: jointoken.Token, timeout: float = 10.0) -> bytes:
    """The CA certificate the endpoint presents, if its fingerprint is the token's; JoinRefused if not."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # nothing is trusted yet: what comes back is checked below
    ca = _request(token, context, "GET", "/ca", None, timeout)
    try:
        seen = pki.fingerprint(ca)
    except InvalidSpec:
        raise JoinRefused(f"{token.host}:{token.port} did not send a CA certificate") from None
    if seen != token.ca_hash:
        raise JoinRefused(f"the CA of {token.host}:{token.port} is not the one the token names "
                          f"(sha256 {seen[:16]}..., expected {token.ca_hash[:16]}...): refusing to join")
    return ca


def request_join(token: jointoken.Token, name: str, advertise: str, client_port: int, member_csr: bytes,
                 client_csr: bytes, timeout: float = 60.0) -> dict[str, Any]:
    """The join exchange (see the module doc). Returns the server's answer; JoinRefused when refused."""
    ca = fetch_ca(token, timeout)
    context = ssl.create_default_context(cadata=ca.decode())  # this CA only, and the name is checked
    body = json.dumps({"token": token.token_id, "secret": token.secret, "name": name, "advertise": advertise,
                       "client_port": client_port, "member_csr": member_csr.decode(), "client_csr": client_csr.decode()}).encode()
    return json.loads(_request(token, context, "POST", "/join", body, timeout))


def _request(token: jointoken.Token, context: ssl.SSLContext, method: str, path: str, body: bytes | None,
             timeout: float) -> bytes:
    conn = http.client.HTTPSConnection(token.host, token.port, context=context, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise JoinRefused(f"could not reach the join endpoint {token.host}:{token.port}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        try:
            why = json.loads(data).get("error", "")
        except ValueError:
            why = data[:200].decode(errors="replace")
        raise JoinRefused(f"{token.host}:{token.port} refused the join: {why}")
    return data
