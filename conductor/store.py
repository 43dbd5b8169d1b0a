"""The one seam to etcd: the only module that talks to it (through :mod:`conductor.etcdpb`).

It calls etcd's gRPC API directly, so every call has a timeout, ranges can count without reading,
transactions can nest, and watches run in threads we own: a watch that breaks (etcd restarted,
connection lost) waits with backoff and lists again instead of spinning or dying.

Atomicity: each call is one etcd request, so :meth:`Store.txn` is atomic and a :meth:`Store.read`
of several ranges is one consistent snapshot. Errors are classified by their gRPC status code (never
by message text, which changes between etcd versions): :class:`StoreUnavailable` when etcd cannot be
reached in time (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED), :class:`NoSpace` when etcd's NOSPACE
alarm refuses writes (RESOURCE_EXHAUSTED), :class:`LeaseLost` when a lease call or a write names a
lease that has expired (NOT_FOUND), :class:`PermissionDenied`, :class:`AuthFailed`,
:class:`RequestRefused` for a request etcd will never take (INVALID_ARGUMENT: too large, too many
operations, a key twice in one transaction), and :class:`StoreError` for anything else.

Security (:class:`~conductor.credentials.Credentials`): an ``https://`` endpoint, or TLS files with
a bare host:port, makes the channel TLS (:class:`TlsFailed` when etcd's certificate or ours is
refused, found by a handshake of our own when the first call cannot reach etcd). With a password,
the store authenticates as the etcd user and sends the token as ``token`` metadata on every call
and stream; when etcd says the token is invalid (expired, or etcd restarted) it authenticates again,
once, and repeats the call: a request refused for its token was not applied, so writes repeat too.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence, TypeVar

import grpc

from . import etcdpb as etcdrpc
from . import metrics
from .credentials import Credentials, probe_tls, wants_tls
from .errors import (AuthFailed, InvalidSpec, LeaseLost, NoSpace, PermissionDenied, RequestRefused, StoreError,
                     StoreUnavailable, TlsFailed)
from .batch import MAX_TXN_OPS, op_size
from .batch import REQUEST_BUDGET as MAX_REQUEST_BYTES
from .keys import prefix_end
from .ops import KV, Compare, Delete, Event, Get, Op, Put, RangeResult, Txn, TxnResult

if TYPE_CHECKING:
    from .follow import Follower, FollowHandler

log = logging.getLogger("conductor.store")
T = TypeVar("T")

DEFAULT_PORT = 2379
RETRY_WINDOW = 2.0  # seconds a read is retried through a passing unavailability
TXNS_IN_FLIGHT = 8  # transactions txn_many keeps in flight: enough for etcd to commit them in groups

_TARGETS = {"mod": etcdrpc.Compare.MOD, "create": etcdrpc.Compare.CREATE,
            "version": etcdrpc.Compare.VERSION, "value": etcdrpc.Compare.VALUE,
            "lease": etcdrpc.Compare.LEASE}
_RESULTS = {"==": etcdrpc.Compare.EQUAL, "!=": etcdrpc.Compare.NOT_EQUAL,
            "<": etcdrpc.Compare.LESS, ">": etcdrpc.Compare.GREATER}
_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.CANCELLED}


def parse_endpoints(spec: str | Sequence[str] | None) -> list[tuple[str, int]]:
    """``"a:2379,b:2379"`` or a list of such (``http://`` prefixes allowed) -> [(host, port)]."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    out: list[tuple[str, int]] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            for scheme in ("http://", "https://"):
                if part.startswith(scheme):
                    part = part[len(scheme):]
            part = part.rstrip("/")
            host, _, port = part.rpartition(":")
            if not host:
                host, port = port, str(DEFAULT_PORT)
            try:
                out.append((host, int(port)))
            except ValueError:
                raise StoreError(f"etcd endpoint {item!r}: port {port!r} is not a number") from None
    return out


def _target(endpoints: list[tuple[str, int]]) -> str:
    if len(endpoints) == 1:
        host, port = endpoints[0]
        return f"{host}:{port}"
    addresses = []
    for host, port in endpoints:
        try:
            ip = socket.getaddrinfo(host, port, socket.AF_INET)[0][4][0]
        except OSError as exc:
            raise StoreError(f"etcd endpoint {host}:{port}: {exc}") from None
        addresses.append(f"{ip}:{port}")
    return "ipv4:" + ",".join(addresses)


NOSPACE_HINT = ("free space with `conductor gc --keep DURATION --compact --defrag --disarm` "
                "(or `etcdctl compact`, `etcdctl defrag`, `etcdctl alarm disarm`)")
_LEASE_NAMED = ("lease", "put", "transaction")  # calls where NOT_FOUND means "no such lease"
_BY_CODE: dict[Any, tuple[type[StoreError], str]] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: (NoSpace, "etcd is out of space (NOSPACE alarm): {what} refused; "
                                         + NOSPACE_HINT + " [etcd: {detail}]"),
    grpc.StatusCode.PERMISSION_DENIED: (PermissionDenied, "etcd at {where} denied {what}{who}: {detail}"),
    grpc.StatusCode.UNAUTHENTICATED: (AuthFailed, "etcd at {where} did not accept the credentials{who} for "
                                      "{what}: {detail}"),
    grpc.StatusCode.INVALID_ARGUMENT: (RequestRefused, "etcd refused {what} as invalid: {detail}"),
}


# etcd answers a call without a token, when its auth is on, with INVALID_ARGUMENT and this text
# (rpctypes.ErrGRPCUserEmpty): the one case told apart by text, since the code is shared with
# requests that are too large
_NO_USER = "etcdserver: user name is empty"


def _translate(exc: grpc.RpcError, what: str, where: str = "", user: str = "") -> StoreError:
    """The error of the rooted tree for a failed call, by its gRPC status code; the code's name is
    kept in the error's ``code`` attribute for the few callers that tell cases apart."""
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    error: StoreError
    if code in _UNAVAILABLE:
        error = StoreUnavailable(f"etcd unavailable during {what}: {detail}")
    elif code == grpc.StatusCode.NOT_FOUND and what.startswith(_LEASE_NAMED):
        error = LeaseLost(f"{what}: {detail}")
    elif code == grpc.StatusCode.INVALID_ARGUMENT and detail == _NO_USER:
        error = AuthFailed(f"etcd at {where} requires a user: give --user NAME with a password "
                           "(--password-file, CONDUCTOR_PASSWORD, or NAME:PASSWORD)")
    elif code in _BY_CODE:
        cls, text = _BY_CODE[code]
        error = cls(text.format(what=what, detail=detail, where=where, who=f" (user {user})" if user else ""))
    else:
        error = StoreError(f"etcd refused {what}: {detail}")
    error.code = code.name if code is not None else ""  # type: ignore[attr-defined]
    return error


class SpaceWatch:
    """Says once that etcd is out of space and once that it takes writes again (not once per
    refused write: every loop of a node meets the alarm, about once a second each).

    ``refused`` is called for every :class:`NoSpace`, ``accepted`` after every write that etcd's
    NOSPACE alarm would have refused (a put, a transaction with a put, a lease grant)."""

    def __init__(self, announce: bool = True):
        self.announce = announce  # the CLI's client says it in its error message instead
        self.full = False
        self._lock = threading.Lock()

    def refused(self) -> None:
        with self._lock:
            was, self.full = self.full, True
        if not was and self.announce:
            log.warning("etcd is out of space (NOSPACE alarm): it refuses every write, so nothing is "
                        "claimed, finished or posted until space is freed; %s. This node carries on by "
                        "itself once the alarm is disarmed", NOSPACE_HINT)

    def accepted(self) -> None:
        if not self.full:  # the common case: no lock
            return
        with self._lock:
            was, self.full = self.full, False
        if was and self.announce:
            log.warning("etcd takes writes again (NOSPACE alarm cleared); carrying on")


def _member(m: Any) -> dict[str, Any]:
    return {"id": m.ID, "name": m.name, "peer_urls": list(m.peerURLs), "client_urls": list(m.clientURLs),
            "learner": bool(m.isLearner)}


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode("utf-8", "replace"), kv.value, kv.create_revision, kv.mod_revision,
              kv.version, kv.lease)


class TLSFiles(NamedTuple):
    """Client TLS for etcd: PEM file paths of the CA to trust and of this client's certificate and
    key. ``server_name``: the name the server certificates are checked against instead of the
    dialled host (needed when dialling several members at once; a laptop cluster's members all
    carry :data:`conductor.pki.CLUSTER_NAME`). Plain paths, so it travels to the supervisor."""

    ca: str
    cert: str
    key: str
    server_name: str = ""


    def credentials(self) -> Credentials:
        return Credentials(cacert=self.ca, cert=self.cert, key=self.key, server_name=self.server_name)


class Store:
    """A connection to one etcd cluster (one or several endpoints, with failover), in plaintext or
    TLS, as an etcd user or none (``credentials``; ``tls``, a :class:`TLSFiles`, is the same given
    as files alone). Raises InvalidSpec for unreadable TLS files or mixed schemes; nothing is sent
    until the first call."""

    def __init__(self, endpoints: str | Sequence[str], timeout: float = 5.0,
                 credentials: Credentials | None = None, tls: TLSFiles | Sequence[str] | None = None):
        if tls:
            credentials = TLSFiles(*tls).credentials()
        self.endpoints = parse_endpoints(endpoints)
        if not self.endpoints:
            raise StoreError("no etcd endpoint given")
        self.timeout = timeout
        self.credentials = credentials or Credentials()
        self.tls = wants_tls(endpoints, self.credentials)
        self._token = ""  # etcd's auth token, sent as "token" metadata; "" = none
        self._authed = False  # authenticated once (or learned that etcd's auth is off)
        self._auth_lock = threading.Lock()
        self._reached = False  # a call has succeeded: TLS works, no need to diagnose it
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 0),  # etcd counts pings with no call as strikes (GOAWAY too_many_pings)
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if len(self.endpoints) > 1:
            options.append(("grpc.lb_policy_name", "round_robin"))
            if self.tls:  # the target is a list of addresses: check certificates for one name
                options.append(("grpc.ssl_target_name_override", self.credentials.server_name or self.endpoints[0][0]))
        elif self.tls and self.credentials.server_name:
            options.append(("grpc.ssl_target_name_override", self.credentials.server_name))
        self._options = options
        self.channel = self._channel(_target(self.endpoints), options)
        self._kv = self._lease = self._watch = self._maint = etcdrpc.Stub(self.channel)
        self._closed = False
        self.space = SpaceWatch()

    def close(self) -> None:
        self._closed = True
        self.channel.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def describe(self) -> str:
        """The endpoints as given to others (tasks' ``CONDUCTOR_ETCD``): ``https://`` when TLS."""
        scheme = "https://" if self.tls else ""
        return ",".join(f"{scheme}{h}:{p}" for h, p in self.endpoints)

    def _name_override(self) -> list[tuple[str, Any]]:
        """Channel options for one member dialled alone, when certificates carry another name."""
        if self.tls and self.credentials.server_name:
            return [("grpc.ssl_target_name_override", self.credentials.server_name)]
        return []

    def _channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(target, options=options)
        root, key, cert = self.credentials.tls_files()
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root, key, cert), options=options)

    # ---- authentication ----------------------------------------------------------------------

    def _token_now(self) -> str:
        """The token to send; authenticates the first time when a password was given."""
        if self.credentials.auth and not self._authed:
            return self._authenticate(self._token)
        return self._token

    def _authenticate(self, stale: str) -> str:
        """Get a new token unless another thread already replaced ``stale``. Raises AuthFailed for
        a wrong user or password, StoreUnavailable when etcd cannot be reached. When etcd's auth
        is off the token stays empty (as etcdctl does)."""
        with self._auth_lock:
            if self._authed and self._token != stale:
                return self._token
            creds = self.credentials
            if stale:  # once per renewal, however many threads met the refused token
                log.info("etcd refused the auth token (expired, or etcd restarted); authenticating again as %s",
                         creds.user)
            try:
                password = creds.read_password()
            except InvalidSpec as exc:  # a password file being replaced: the caller retries later
                raise AuthFailed(f"etcd user {creds.user!r}: {exc}") from None
            request = etcdrpc.AuthenticateRequest(name=creds.user, password=password)
            try:
                self._token = self._kv.Authenticate(request, timeout=self.timeout).token
            except grpc.RpcError as exc:
                self._token = ""
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:  # not "auth is not enabled"
                    raise self._auth_error(exc) from None
            except ValueError as exc:  # a closed channel
                raise StoreUnavailable(f"etcd unavailable during authentication: {exc}") from None
            self._authed = True
            return self._token

    def _auth_error(self, exc: grpc.RpcError) -> StoreError:
        if exc.code() in _UNAVAILABLE:
            error = _translate(exc, "authentication", self.describe())
            return self._diagnosed(error) if isinstance(error, StoreUnavailable) else error
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # etcd's ErrGRPCAuthFailed
            return AuthFailed(f"etcd at {self.describe()} refused user {self.credentials.user!r}: "
                              "wrong user name or password")
        return _translate(exc, "authentication", self.describe(), self.credentials.user)

    def _authed_call(self, attempt: Callable[[str], T]) -> T:
        """``attempt(token)``; when etcd refuses the token (expired, etcd restarted, or none sent
        to an etcd that wants one), authenticate again (asking for the password on a terminal if
        none was given) and attempt once more."""
        token = self._token_now()
        try:
            return attempt(token)
        except AuthFailed:
            creds = self.credentials
            if not (creds.auth or creds.ask_password()):
                raise
            return attempt(self._authenticate(token))

    @staticmethod
    def _metadata(token: str) -> tuple[tuple[str, str], ...] | None:
        return (("token", token),) if token else None

    def _diagnosed(self, error: StoreUnavailable) -> StoreError:
        """Before any call succeeded, an unreachable TLS etcd may be a refused certificate: a
        handshake of our own says so (gRPC's status only says 'unavailable')."""
        if not self.tls or self._reached:
            return error
        for host, port in self.endpoints:
            reason = probe_tls(host, port, self.credentials)
            if reason:
                return TlsFailed(f"TLS with etcd at {host}:{port} failed: {reason}")
        return error

    # ---- reads -------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], request: Any, what: str, timeout: float | None = None,
              idempotent: bool = False, grows: bool = False) -> Any:
        """One request. A read that meets a passing unavailability (a leader election, a member
        going away) is retried until the timeout; a write is not, since it may have been applied.
        ``grows``: a write that etcd's NOSPACE alarm refuses, so its success means the alarm is gone.
        A refused token is renewed and the request sent again (see :meth:`_authed_call`)."""
        started, error = time.monotonic(), None
        try:
            return self._authed_call(lambda token: self._attempt(fn, request, what, timeout, idempotent, grows,
                                                                 token))
        except Exception as exc:
            error = exc
            raise
        finally:  # every unary request passes here: one place for etcd's latency and errors
            metrics.etcd_request(what, time.monotonic() - started, error)

    def _attempt(self, fn: Callable[..., Any], request: Any, what: str, timeout: float | None,
                 idempotent: bool, grows: bool, token: str) -> Any:
        budget = timeout or self.timeout
        retry_until = time.monotonic() + min(RETRY_WINDOW, budget)  # elections settle in a second or two
        delay = 0.05
        while True:
            try:
                resp = fn(request, timeout=budget, metadata=self._metadata(token))
                self._reached = True
                if grows:
                    self.space.accepted()
                return resp
            except grpc.RpcError as exc:
                error = _translate(exc, what, self.describe(), self.credentials.user)
            except ValueError as exc:  # "Cannot invoke RPC on closed channel!"
                raise StoreUnavailable(f"etcd unavailable during {what}: {exc}") from None
            if isinstance(error, NoSpace):
                self.space.refused()
            if isinstance(error, StoreUnavailable) and not self._reached:
                error = self._diagnosed(error)
            if not (idempotent and isinstance(error, StoreUnavailable)) or self._closed \
                    or time.monotonic() + delay >= retry_until:
                raise error
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def get(self, key: str) -> KV | None:
        resp = self._call(self._kv.Range, etcdrpc.RangeRequest(key=key.encode()), "get", idempotent=True)
        return _kv(resp.kvs[0]) if resp.kvs else None

    def range(self, key: str, range_end: str | None = None, *, limit: int = 0, revision: int = 0,
              keys_only: bool = False, count_only: bool = False, timeout: float | None = None,
              descending: bool = False) -> RangeResult:
        req = etcdrpc.RangeRequest(key=key.encode(), limit=limit, revision=revision,
                                   keys_only=keys_only, count_only=count_only)
        if descending:
            req.sort_order = etcdrpc.RangeRequest.DESCEND
            req.sort_target = etcdrpc.RangeRequest.KEY
        if range_end is not None:
            req.range_end = range_end.encode("latin-1")
        resp = self._call(self._kv.Range, req, "range", timeout, idempotent=True)
        return RangeResult([_kv(kv) for kv in resp.kvs], resp.count, resp.more, resp.header.revision)

    def count(self, prefix: str) -> int:
        return self.range(prefix, prefix_end(prefix), count_only=True).count

    def scan(self, prefix: str, *, page: int = 1000, revision: int = 0,
             keys_only: bool = False) -> tuple[list[KV], int]:
        """Every key under ``prefix`` as one snapshot (paged reads pinned to one revision)."""
        end = prefix_end(prefix)
        out: list[KV] = []
        start = prefix
        while True:
            res = self.range(start, end, limit=page, revision=revision, keys_only=keys_only,
                             timeout=max(self.timeout, 30.0))
            if not revision:
                revision = res.revision
            out.extend(res.kvs)
            if not res.more or not res.kvs:
                return out, revision
            start = res.kvs[-1].key + "\0"

    def iter_prefix(self, prefix: str, *, page: int = 1000, keys_only: bool = False) -> Iterator[KV]:
        """Like :meth:`scan` but yields page by page, so memory stays at one page."""
        end = prefix_end(prefix)
        start, revision = prefix, 0
        while True:
            res = self.range(start, end, limit=page, revision=revision, keys_only=keys_only,
                             timeout=max(self.timeout, 30.0))
            revision = revision or res.revision
            yield from res.kvs
            if not res.more or not res.kvs:
                return
            start = res.kvs[-1].key + "\0"

    def read(self, ops: Sequence[Get]) -> TxnResult:
        """Several ranges as one consistent snapshot (a transaction with no compares)."""
        return self.txn((), ops)

    # ---- writes ------------------------------------------------------------------------------

    def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = (),
            timeout: float | None = None) -> TxnResult:
        """One atomic transaction. Returns whether the compares held and what the branch read."""
        req = _txn_request(Txn(compare, success, failure))
        reads_only = not compare and all(isinstance(op, Get) for op in (*success, *failure))
        resp = self._call(self._kv.Txn, req, "transaction", timeout, idempotent=reads_only,
                          grows=_has_put((*success, *failure)))
        return _txn_result(resp, resp.header.revision)

    def txn_many(self, txns: Sequence[tuple[Sequence[Compare], Sequence[Op]]],
                 in_flight: int = TXNS_IN_FLIGHT) -> list[TxnResult]:
        """Several independent transactions, up to ``in_flight`` at once (etcd's group commit then
        shares one fsync among those that arrive together); their results in the order given.

        Each transaction alone is atomic, as :meth:`txn`; together they are not, and their order
        of commit is not the order given. Raises what :meth:`txn` raises (the error of the first
        failed transaction in the order given), but only once every transaction already sent has
        ended: none commits after this returns or raises. After a failure, those not yet sent are
        not sent."""
        if len(txns) <= 1 or in_flight <= 1:
            return [self.txn(compare, ops) for compare, ops in txns]
        with ThreadPoolExecutor(max_workers=min(in_flight, len(txns)), thread_name_prefix="etcd-txn") as pool:
            futures = [pool.submit(self.txn, compare, ops) for compare, ops in txns]
            for future in futures:
                if future.exception() is not None:  # waits for it; stop sending the rest
                    for later in futures:
                        later.cancel()
                    break
        # the pool's exit has waited for every transaction sent: none is still on its way
        return [future.result() for future in futures]  # raises the first error in order

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        resp = self._call(self._kv.Put, etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease), "put",
                          grows=True)
        return resp.header.revision

    def delete(self, key: str, range_end: str | None = None) -> int:
        req = etcdrpc.DeleteRangeRequest(key=key.encode())
        if range_end is not None:
            req.range_end = range_end.encode("latin-1")
        return self._call(self._kv.DeleteRange, req, "delete").deleted

    def delete_prefix(self, prefix: str) -> int:
        return self.delete(prefix, prefix_end(prefix))

    # ---- leases ------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        resp = self._call(self._lease.LeaseGrant, etcdrpc.LeaseGrantRequest(TTL=ttl), "lease grant", grows=True)
        if resp.error:
            raise StoreError(f"lease grant refused: {resp.error}")
        return resp.ID

    def keepalive(self, lease_id: int, timeout: float | None = None) -> int:
        """Refresh a lease once; returns its new TTL, 0 when it has already expired."""
        return self._authed_call(lambda token: self._keepalive(lease_id, timeout, token))

    def _keepalive(self, lease_id: int, timeout: float | None, token: str) -> int:
        try:
            stream = self._lease.LeaseKeepAlive(iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]),
                                                timeout=timeout or self.timeout, metadata=self._metadata(token))
            for resp in stream:
                self._reached = True
                return resp.TTL
            return 0
        except grpc.RpcError as exc:
            raise _translate(exc, "lease keepalive", self.describe(), self.credentials.user) from None
        except ValueError as exc:
            raise StoreUnavailable(f"etcd unavailable during lease keepalive: {exc}") from None

    def revoke(self, lease_id: int, timeout: float | None = None) -> None:
        """Revoke a lease (deleting its keys); a lease already gone is not an error."""
        try:
            self._call(self._lease.LeaseRevoke, etcdrpc.LeaseRevokeRequest(ID=lease_id), "lease revoke",
                       timeout)
        except LeaseLost:
            pass

    def lease_ttl(self, lease_id: int) -> int:
        """Seconds left on a lease, -1 when it does not exist."""
        resp = self._call(self._lease.LeaseTimeToLive, etcdrpc.LeaseTimeToLiveRequest(ID=lease_id), "lease ttl",
                          idempotent=True)
        return resp.TTL

    # ---- maintenance -------------------------------------------------------------------------

    def revision(self) -> int:
        """etcd's current revision, from the member's status: an etcd user whose role covers only
        the namespace may not range over other keys, but may ask for the status."""
        resp = self._call(self._maint.Status, etcdrpc.StatusRequest(), "status", idempotent=True)
        return resp.header.revision

    def status(self) -> dict[str, Any]:
        resp = self._call(self._maint.Status, etcdrpc.StatusRequest(), "status", idempotent=True)
        return {"version": resp.version, "db_size": resp.dbSize, "leader": resp.leader,
                "revision": resp.header.revision, "member": resp.header.member_id}

    def compact(self, revision: int) -> None:
        """Compact history up to ``revision``; one already compacted (OUT_OF_RANGE) is not an error."""
        try:
            self._call(self._kv.Compact, etcdrpc.CompactionRequest(revision=revision), "compact", 60.0)
        except StoreError as exc:
            if getattr(exc, "code", "") != "OUT_OF_RANGE" or revision > self.revision():
                raise

    def alarms(self) -> list[tuple[int, str]]:
        """etcd's raised alarms as (member id, alarm name), e.g. ``(0x8e9e05c52164694d, "NOSPACE")``."""
        req = etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.GET)
        resp = self._call(self._maint.Alarm, req, "alarm list", idempotent=True)
        return [(a.memberID, etcdrpc.ALARM_NAMES.get(a.alarm, str(a.alarm))) for a in resp.alarms]

    def disarm(self) -> list[tuple[int, str]]:
        """Deactivate every NOSPACE alarm (etcd then takes writes again, if it has room); returns
        the alarms disarmed. Disarming before space was freed only lets etcd raise it again."""
        disarmed = []
        for member, name in self.alarms():
            if name == "NOSPACE":
                req = etcdrpc.AlarmRequest(action=etcdrpc.AlarmRequest.DEACTIVATE, memberID=member,
                                           alarm=etcdrpc.ALARM_NOSPACE)
                self._call(self._maint.Alarm, req, "alarm disarm")
                disarmed.append((member, name))
        return disarmed

    def defragment(self, timeout: float = 120.0) -> list[str]:
        """Defragment every endpoint's database file, one at a time (each member blocks while it
        does; after a compaction this is what returns the freed space to the disk and the quota).
        Returns the endpoints done; the first failure raises."""
        done = []
        for host, port in self.endpoints:
            channel = self._channel(f"{host}:{port}", self._name_override())
            try:
                self._call(etcdrpc.Stub(channel).Defragment, etcdrpc.DefragmentRequest(),
                           f"defragment of {host}:{port}", timeout)
            finally:
                channel.close()
            done.append(f"{host}:{port}")
        return done

    # ---- users and roles (etcd's Auth service; root only, except as etcd says) ---------------------

    def auth_call(self, method: str, what: str, **fields: Any) -> Any:
        """One call of etcd's Auth service by Conductor's name for it (``UserAdd``, ``RoleAdd``,
        ``RoleGrantPermission``... see ``etcdpb.AUTH_CALLS``), fields as keyword arguments;
        ``perm=(type, key, range_end)`` builds the permission. Not retried. Raises PermissionDenied
        (not root), AuthFailed, and StoreError with etcd's words (a user that exists...)."""
        request_cls = etcdrpc.AUTH_MESSAGES[method][0]
        if "perm" in fields:
            kind, key, end = fields.pop("perm")
            fields["perm"] = etcdrpc.Permission(permType=kind, key=key.encode(), range_end=end.encode())
        return self._call(getattr(self._maint, method), request_cls(**fields), what)

    # ---- membership (etcd's Cluster service) ------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """etcd's members: id, name, peer_urls, client_urls, learner (a started member that has not
        published its name yet has name "" and no client URLs)."""
        resp = self._call(self._maint.MemberList, etcdrpc.MemberListRequest(), "member list", idempotent=True)
        return [_member(m) for m in resp.members]

    def member_add(self, peer_urls: list[str], learner: bool = True) -> dict[str, Any]:
        """Add a member (a learner by default: it votes only once promoted, so adding it cannot cost
        the cluster its quorum); returns the new member. Not retried: it may have been applied."""
        req = etcdrpc.MemberAddRequest(peerURLs=peer_urls, isLearner=learner)
        return _member(self._call(self._maint.MemberAdd, req, "member add").member)

    def member_promote(self, member_id: int) -> None:
        """Make a learner a voting member. etcd refuses (FAILED_PRECONDITION, as StoreError) while the
        learner has not caught up with the leader's log: retry."""
        self._call(self._maint.MemberPromote, etcdrpc.MemberPromoteRequest(ID=member_id), "member promote")

    def member_remove(self, member_id: int) -> None:
        """Remove a member; one already gone (NOT_FOUND) is not an error."""
        try:
            self._call(self._maint.MemberRemove, etcdrpc.MemberRemoveRequest(ID=member_id), "member remove")
        except StoreError as exc:
            if getattr(exc, "code", "") != "NOT_FOUND":
                raise

    def endpoint_status(self, endpoint: str, timeout: float = 2.0) -> dict[str, Any]:
        """The Status of one member (``host:port``), asked directly rather than through the
        balanced channel: leader, raft_index, revision, member. Raises StoreUnavailable if it does
        not answer."""
        channel = self._channel(endpoint, self._name_override())
        try:
            resp = self._call(etcdrpc.Stub(channel).Status, etcdrpc.StatusRequest(), f"status of {endpoint}",
                              timeout)
        finally:
            channel.close()
        return {"version": resp.version, "db_size": resp.dbSize, "leader": resp.leader,
                "raft_index": resp.raftIndex, "revision": resp.header.revision, "member": resp.header.member_id}

    # ---- watches -----------------------------------------------------------------------------

    def follow(self, prefix: str, handler: "FollowHandler", name: str = "watch") -> "Follower":
        """List ``prefix`` and then watch it, in a thread of its own: see :mod:`conductor.follow`."""
        from .follow import Follower

        follower = Follower(self, prefix, handler, name)
        follower.start()
        return follower

    def watch(self, prefix: str, start_revision: int, prev_kv: bool = False, exact: bool = False,
              bare: bool = False) -> "WatchStream":
        """Open a watch on ``prefix`` (with ``exact``: on that one key) from ``start_revision``;
        iterate it for :class:`WatchBatch`. With ``prev_kv`` each event carries the key as it was
        before (``Event.prev``); with ``bare`` no event is made into Python objects at all, the
        batches only count them (``WatchBatch.changes``: for a follower that only needs to know
        that something changed)."""
        return WatchStream(self, prefix, start_revision, prev_kv, exact, bare)


@dataclass
class WatchBatch:
    """One watch response: the events of one or more whole revisions, or why the watch ended."""

    events: list[Event]
    revision: int
    created: bool = False
    broken: str | None = None  # "compacted" or "canceled": list again
    compact_revision: int = 0  # when compacted: the oldest revision etcd still has
    changes: int = 0  # how many events the response had (``events`` is empty for a bare watch)


class WatchStream:
    """One open etcd watch. Iterating yields batches until it ends; a failure raises StoreUnavailable."""

    def __init__(self, store: Store, prefix: str, start_revision: int, prev_kv: bool = False, exact: bool = False,
                 bare: bool = False):
        self._bare = bare
        self._requests: "queue.Queue[Any]" = queue.Queue()
        create = etcdrpc.WatchCreateRequest(key=prefix.encode(), start_revision=start_revision, prev_kv=prev_kv)
        if not exact:
            create.range_end = prefix_end(prefix).encode("latin-1")
        requests = self._requests

        def request_iter() -> Iterator[Any]:
            yield etcdrpc.WatchRequest(create_request=create)
            while requests.get() is not None:
                pass

        self._call = store._watch.Watch(request_iter(), metadata=store._metadata(store._token_now()))
        self._where, self._user = store.describe(), store.credentials.user

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for resp in self._call:
                if resp.compact_revision or resp.canceled:
                    yield WatchBatch([], resp.header.revision, broken="compacted" if resp.compact_revision else "canceled",
                                     compact_revision=resp.compact_revision)
                    return
                events = [] if self._bare else [
                    Event("put" if ev.type == 0 else "delete", _kv(ev.kv), _kv(ev.prev_kv) if ev.HasField("prev_kv") else None)
                    for ev in resp.events]
                yield WatchBatch(events, resp.header.revision, created=resp.created, changes=len(resp.events))
        except grpc.RpcError as exc:
            raise _translate(exc, "watch", self._where, self._user) from None

    def cancel(self) -> None:
        self._requests.put(None)
        self._call.cancel()


# ---- request building ----------------------------------------------------------------------------


def _has_put(ops: Sequence[Op]) -> bool:
    """Does any branch of these operations (nested transactions included) put a key?"""
    return any(isinstance(op, Put) or (isinstance(op, Txn) and _has_put((*op.success, *op.failure)))
               for op in ops)


def _range_request(op: Get) -> Any:
    req = etcdrpc.RangeRequest(key=op.key.encode(), count_only=op.count_only, keys_only=op.keys_only,
                               limit=op.limit)
    if op.descending:
        req.sort_order = etcdrpc.RangeRequest.DESCEND
        req.sort_target = etcdrpc.RangeRequest.KEY
    if op.range_end is not None:
        req.range_end = op.range_end.encode("latin-1")
    return req


def _request_op(op: Op) -> Any:
    if isinstance(op, Put):
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=op.key.encode(), value=op.value,
                                                                lease=op.lease))
    if isinstance(op, Delete):
        req = etcdrpc.DeleteRangeRequest(key=op.key.encode())
        if op.range_end is not None:
            req.range_end = op.range_end.encode("latin-1")
        return etcdrpc.RequestOp(request_delete_range=req)
    if isinstance(op, Get):
        return etcdrpc.RequestOp(request_range=_range_request(op))
    if isinstance(op, Txn):
        return etcdrpc.RequestOp(request_txn=_txn_request(op))
    raise TypeError(f"not an etcd operation: {op!r}")


def _compare(c: Compare) -> Any:
    msg = etcdrpc.Compare(key=c.key.encode(), target=_TARGETS[c.target], result=_RESULTS[c.op])
    if c.range_end is not None:
        msg.range_end = c.range_end.encode("latin-1")
    if c.target == "mod":
        msg.mod_revision = int(c.value)
    elif c.target == "create":
        msg.create_revision = int(c.value)
    elif c.target == "version":
        msg.version = int(c.value)
    elif c.target == "lease":
        msg.lease = int(c.value)
    else:
        msg.value = c.value if isinstance(c.value, bytes) else str(c.value).encode()
    return msg


def _txn_request(t: Txn) -> Any:
    return etcdrpc.TxnRequest(compare=[_compare(c) for c in t.compare],
                              success=[_request_op(o) for o in t.success],
                              failure=[_request_op(o) for o in t.failure])


def _txn_result(resp: Any, revision: int) -> TxnResult:
    out: list[Any] = []
    for r in resp.responses:
        kind = r.WhichOneof("response")
        if kind == "response_range":
            rr = r.response_range
            out.append(RangeResult([_kv(kv) for kv in rr.kvs], rr.count, rr.more, revision))
        elif kind == "response_delete_range":
            out.append(r.response_delete_range.deleted)
        elif kind == "response_txn":
            out.append(_txn_result(r.response_txn, revision))
        else:
            out.append(None)
    return TxnResult(resp.succeeded, revision, out)


__all__ = ["Store", "TLSFiles", "SpaceWatch", "WatchStream", "WatchBatch", "MAX_TXN_OPS", "MAX_REQUEST_BYTES", "op_size",
           "parse_endpoints"]
