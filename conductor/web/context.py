"""What the API and the UI share: settings, the clients acting as each request's user, the live feed.

The UI module gets a :class:`WebContext` (``ui.routes(ctx)``) with:

* ``ctx.client_for(request)``: the :class:`conductor.Client` acting as the request's user. With
  etcd auth on (the server was given etcd credentials and etcd refuses anonymous requests) that is
  the user of the request's HTTP Basic credentials, checked by etcd itself; with auth off one
  shared client (the user a Basic user name or ``?as=`` names, else the server's).
* ``ctx.feed``: :class:`Feed`, live transition records shared by every page.
* ``ctx.templates_dir``, ``ctx.static_dir``: the UI's shipped files.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from starlette.requests import HTTPConnection

from ..client import Client
from ..credentials import Credentials
from ..errors import AuthFailed, ConductorError, StoreUnavailable
from ..keys import DEFAULT_NAMESPACE
from ..store import Store

log = logging.getLogger("conductor.web")

HERE = Path(__file__).parent
IDLE_CLOSE = 300.0  # seconds a user's client is kept after its last request
QUEUE_SIZE = 1000  # records a slow subscriber may fall behind before it is told to reload
FEED_IDLE = 30.0  # seconds the shared watch outlives its last subscriber (a page reloading keeps it)


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

    def get(self, user: str, password: str) -> Client:
        key = (user, hashlib.sha256(f"{user}\0{password}".encode()).hexdigest())
        now = time.monotonic()
        with self._lock:
            found = self._clients.get(key)
            client = found[0] if found else self.make(user, password)
            self._clients[key] = (client, now)
            stale = [k for k, (_, used) in self._clients.items() if now - used > self.idle]
            closing = [self._clients.pop(k)[0] for k in stale]
        for old in closing:
            self._close(old)
        return client

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

    def refused(self, client: Client) -> None:
        """etcd refused this client's credentials: forget it, so a corrected login starts afresh."""
        if client is not self.shared:
            self.users.forget(client)

    def close(self) -> None:
        self.feed.close()
        self.users.close()
        self.names.close()
        self.shared.close()


class FeedRecord(dict):
    """A transition record as the feed shares it between subscribers: a plain dict to them, that
    keeps its SSE encoding (:func:`conductor.web.sse.encode`) once made."""

    __slots__ = ("encoded",)

    def __init__(self, record: dict[str, Any]):
        super().__init__(record)
        self.encoded: dict[bool, bytes] = {}


class Subscription:
    """One subscriber's bounded queue of records, read as an async iterator. When it overflows the
    oldest records are dropped and the next item is ``{"kind": "reload", "dropped": N}``: the
    subscriber has missed transitions and should read its view again."""

    def __init__(self, feed: "Feed", ids: set[str] | None, user: str | None, size: int):
        self.feed = feed
        self.ids = ids
        self.user = user
        self.queue: deque[dict[str, Any]] = deque()
        self.size = size
        self.dropped = 0
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()

    def wants(self, record: dict[str, Any]) -> bool:
        if self.user is not None and record.get("user") not in (None, self.user):
            return False
        if self.ids is None:
            return True
        rid, job = record.get("id", ""), record.get("job")
        return any(rid == i or rid.startswith(i + ".") or job == i for i in self.ids)

    def push(self, records: list[dict[str, Any]]) -> None:  # on the event loop
        for record in records:
            if self.wants(record):
                if len(self.queue) >= self.size:
                    self.queue.popleft()
                    self.dropped += 1
                self.queue.append(record)
        if self.queue or self.dropped:
            self.ready.set()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self.queue and not self.dropped:
            self.ready.clear()
            await self.ready.wait()
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self.queue.clear()
            return {"kind": "reload", "dropped": dropped}
        return self.queue.popleft()

    def drain_nowait(self) -> list[dict[str, Any]]:
        """Every record queued now, without waiting (the SSE writer sends them in one write)."""
        if self.dropped:
            return []  # the reload marker comes through __anext__
        out = list(self.queue)
        self.queue.clear()
        return out

    async def aclose(self) -> None:
        self.feed.unsubscribe(self)


class Feed:
    """Live transition records (as ``conductor events --json`` prints them) for every subscriber,
    from ONE :meth:`Client.events` watch per server (every user's records, filtered per
    subscriber), started with the first subscriber. A watch that fails for good (permissions) is
    started again after a pause; etcd being away is waited out inside it."""

    def __init__(self, client: Client, size: int = QUEUE_SIZE):
        self.client = client
        self.size = size
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()  # the server is closing
        self._watch_stop: threading.Event | None = None  # set: the current watch ends (no one listens)
        self._pending: dict[asyncio.AbstractEventLoop, list[dict[str, Any]]] = {}
        self._waking: set[asyncio.AbstractEventLoop] = set()

    def subscribe(self, ids: set[str] | None = None, user: str | None = None) -> Subscription:
        """A subscription (an async iterator of records) to the records of ``ids`` (job, layer or
        task ids and everything under them; None: all) of ``user`` (None: every user's). Call
        from the event loop; ``await sub.aclose()`` when done."""
        sub = Subscription(self, ids, user, self.size)
        with self._lock:
            self._subs.add(sub)
            if self._watch_stop is None:
                self._watch_stop = threading.Event()
                threading.Thread(target=self._run, args=(self._watch_stop,), name="web-feed", daemon=True).start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Drop a subscriber; when none is left for :data:`FEED_IDLE` seconds the watch ends
        (an idle server costs etcd nothing), and the next subscriber starts it again."""
        with self._lock:
            self._subs.discard(sub)
            if self._subs or self._watch_stop is None:
                return
        timer = threading.Timer(FEED_IDLE, self._stop_if_idle)
        timer.daemon = True
        timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            if self._subs or self._watch_stop is None:
                return
            self._watch_stop.set()
            self._watch_stop = None

    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def _deliver(self, records: list[dict[str, Any]]) -> None:  # on the feed's thread
        """Queue a revision's records for the subscribers' loops. One wake-up per loop carries
        every revision that arrived before the loop got to it, not one per revision and
        subscriber; each record is wrapped once so its JSON is encoded once for all of them."""
        shared = [FeedRecord(r) for r in records]
        with self._lock:
            loops = {sub.loop for sub in self._subs}
            wake = [loop for loop in loops if loop not in self._waking]
            for loop in loops:
                self._pending.setdefault(loop, []).extend(shared)
            self._waking.update(wake)
        for loop in wake:
            try:
                loop.call_soon_threadsafe(self._flush, loop)
            except RuntimeError:  # that loop is closed: the server is stopping
                with self._lock:
                    self._pending.pop(loop, None)
                    self._waking.discard(loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:  # on ``loop``
        with self._lock:
            records = self._pending.pop(loop, [])
            self._waking.discard(loop)
            subs = [sub for sub in self._subs if sub.loop is loop]
        for sub in subs:
            sub.push(records)

    def _run(self, watch_stop: threading.Event) -> None:
        while not (self._stop.is_set() or watch_stop.is_set()):
            try:
                self.client.events(self._deliver, all_users=True, stop=watch_stop)
            except ConductorError as exc:
                if not isinstance(exc, StoreUnavailable):
                    log.warning("the live feed stopped (%s); starting it again in 5 s", exc)
                watch_stop.wait(5.0)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self._watch_stop is not None:
                self._watch_stop.set()

