"""What the API and the UI share: settings, the clients acting as each request's user, the live feed.

The UI module gets a :class:`WebContext` (``ui.routes(ctx)``) with:

* ``ctx.client_for(request)``: the :class:`conductor.Client` acting as the request's user. With
  etcd auth on (the server was given etcd credentials and etcd refuses anonymous requests) that is
  the user of the request's HTTP Basic credentials, checked by etcd itself; with auth off one
  shared client (the user a Basic user name or ``?as=`` names, else the server's).
* ``ctx.hold(client)``: keeps a user's client open while a stream uses it; ``ctx.refused(client)``:
  forgets one whose password etcd refused.
* ``ctx.feed``: :class:`conductor.web.feed.Feed`, transition records shared by every
  ``/api/v1/events`` stream (a UI page watches just its own keys: :class:`~.feed.KeyWatch`).
* ``ctx.templates_dir``, ``ctx.static_dir``: the UI's shipped files.
"""
from __future__ import annotations

import base64
import contextlib
import binascii
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from starlette.requests import HTTPConnection

from ..client import Client
from ..credentials import Credentials
from ..errors import AuthFailed, ConductorError
from ..keys import DEFAULT_NAMESPACE
from ..store import Store
from .feed import Feed

log = logging.getLogger("conductor.web")

HERE = Path(__file__).parent
IDLE_CLOSE = 300.0  # seconds a user's client is kept after its last request


@dataclass
class WebSettings:
    """What ``conductor serve`` takes."""

    etcd: list[str] = field(default_factory=lambda: ["127.0.0.1:2379"])
    namespace: str = DEFAULT_NAMESPACE
    credentials: Credentials = field(default_factory=Credentials)
    node: str = ""  # the node this server belongs to ("": a standalone ``serve``): /healthz follows its session
    metrics_dir: Path | None = None  # the node's metric files (conductor.metrics.use_directory)
    timeout: float = 5.0
    auth: bool | None = None  # None: ask etcd whether it wants credentials


class Unauthorized(ConductorError):
    """The request carries no (or malformed) HTTP Basic credentials, and etcd auth is on."""


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic ...`` header; None when it is not one."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep and user else None


class ClientPool:
    """Clients keyed by (user, a hash of the password): one etcd connection per user, not per
    request; a client unused for ``idle`` seconds is closed. The password itself is kept only in
    the client's credentials (etcd needs it again when its token expires), never logged."""

    def __init__(self, make: Callable[[str, str], Client], idle: float = IDLE_CLOSE, owns: bool = True):
        self.make = make
        self.idle = idle
        self.owns = owns  # False: the clients share a store that is not theirs to close
        self._clients: dict[tuple[str, str], tuple[Client, float]] = {}
        self._lock = threading.Lock()
        self._busy: dict[int, int] = {}  # id(client) -> requests and follows using it now

    def get(self, user: str, password: str) -> Client:
        key = (user, hashlib.sha256(f"{user}\0{password}".encode()).hexdigest())
        now = time.monotonic()
        with self._lock:
            found = self._clients.get(key)
            client = found[0] if found else self.make(user, password)
            self._clients[key] = (client, now)
        self.reap(now)
        return client

    def reap(self, now: float | None = None) -> None:
        """Close the clients unused for ``idle`` seconds, but none a follow still holds."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [k for k, (c, used) in self._clients.items()
                     if now - used > self.idle and not self._busy.get(id(c))]
            closing = [self._clients.pop(k)[0] for k in stale]
        for old in closing:
            self._close(old)

    @contextlib.contextmanager
    def hold(self, client: Client) -> Iterator[Client]:
        """Keep ``client`` open while a request or a follow uses it."""
        with self._lock:
            self._busy[id(client)] = self._busy.get(id(client), 0) + 1
        try:
            yield client
        finally:
            with self._lock:
                left = self._busy.pop(id(client)) - 1
                if left:
                    self._busy[id(client)] = left

    def _close(self, client: Client) -> None:
        if self.owns:
            client.close()

    def forget(self, client: Client) -> None:
        """Drop (and close) a client whose credentials etcd refused."""
        with self._lock:
            for k, (c, _) in list(self._clients.items()):
                if c is client:
                    del self._clients[k]
        self._close(client)

    def close(self) -> None:
        with self._lock:
            clients = [c for c, _ in self._clients.values()]
            self._clients.clear()
        for c in clients:
            self._close(c)


class WebContext:
    """Everything a route needs; one per server (no globals)."""

    def __init__(self, settings: WebSettings):
        self.settings = settings
        self.templates_dir = HERE / "templates"
        self.static_dir = HERE / "static"
        self.shared = Client(etcd=settings.etcd, namespace=settings.namespace, credentials=settings.credentials,
                             timeout=settings.timeout)
        self.shared.store.space.announce = False
        self._auth = settings.auth
        self.users = ClientPool(self._user_client)
        self.names = ClientPool(lambda user, _: Client(store=self.shared.store, namespace=settings.namespace,
                                                        user=user), owns=False)
        self.feed = Feed(self.shared)

    @property
    def auth(self) -> bool:
        """Do requests need a user's credentials? Asked of etcd once: does it refuse an anonymous
        read? Raises StoreUnavailable while etcd cannot be reached."""
        if self._auth is None:
            creds = self.settings.credentials
            anonymous = Credentials(cacert=creds.cacert, cert=creds.cert, key=creds.key, server_name=creds.server_name)
            with Store(self.settings.etcd, timeout=self.settings.timeout, credentials=anonymous) as store:
                try:
                    store.get(self.shared.keys.meta("web-auth-probe"))
                    self._auth = False
                except AuthFailed:
                    self._auth = True
            log.info("etcd auth is %s: the web UI and API %s", "on" if self._auth else "off",
                     "ask for the user's etcd credentials" if self._auth else "need no login")
        return self._auth

    def _user_client(self, user: str, password: str) -> Client:
        creds = self.settings.credentials
        mine = Credentials(cacert=creds.cacert, cert=creds.cert, key=creds.key, server_name=creds.server_name,
                           user=user, password=password)
        return Client(etcd=self.settings.etcd, namespace=self.settings.namespace, credentials=mine,
                      timeout=self.settings.timeout)

    def client_for(self, request: HTTPConnection) -> Client:
        """The client acting as this request's user (see the module's docstring). Raises
        Unauthorized when auth is on and the request has no Basic credentials; a wrong password
        surfaces as AuthFailed at the client's first etcd request."""
        given = basic_credentials(request.headers.get("authorization", ""))
        if self.auth:
            if given is None:
                raise Unauthorized("log in with your etcd user name and password")
            return self.users.get(*given)
        name = (given[0] if given else "") or request.query_params.get("as", "")
        return self.names.get(name, "") if name else self.shared

    def hold(self, client: Client) -> contextlib.AbstractContextManager[Client]:
        """Keep a request's client open while it is used (a follow may outlast the idle time)."""
        return (self.users if self.auth else self.names).hold(client)

    def reap(self) -> None:
        """Close idle user clients (the app calls this every minute)."""
        self.users.reap()
        self.names.reap()

    def refused(self, client: Client) -> None:
        """etcd refused this client's credentials: forget it, so a corrected login starts afresh."""
        if client is not self.shared:
            self.users.forget(client)

    def close(self) -> None:
        self.feed.close()
        self.users.close()
        self.names.close()
        self.shared.close()
