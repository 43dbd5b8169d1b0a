"""Feeds a node's :class:`~conductor.clock.Clock` with the clocks it can see.

* Peers: a watch on ``nodes/`` (list-then-watch, :meth:`Store.follow`). Every put of another node's
  key carries that node's clock (``at``, read just before the write), so ``at`` minus this node's
  clock on arrival is one sample. A listing carries values written up to 10 s before, so it only
  drops the samples of nodes that are gone; a delete drops that node's sample.
* etcd: the ``Date`` header of a GET of each endpoint's ``/version`` (etcd serves HTTP on its
  client port), at start and then every :data:`ETCD_EVERY` seconds, from a thread of its own. It
  uses the store's scheme (https with the store's CA and client certificate when TLS is on) with a
  short timeout; an endpoint that does not answer drops its sample.

When the judgement changes (skewed, recovered) ``on_change`` is called, so the node key shows it at
once rather than at the next refresh.
"""
from __future__ import annotations

import http.client
import logging
import ssl
import threading
from typing import Callable

from . import codec
from .clock import Clock, date_offset
from .follow import FollowHandler
from .keys import Keys
from .ops import KV, Event
from .store import Store
from .threadname import name_this_thread

log = logging.getLogger("conductor.node")

ETCD_EVERY = 30.0  # seconds between reads of etcd's clock
HTTP_TIMEOUT = 2.0


def etcd_offset(host: str, port: int, clock: Clock, timeout: float = HTTP_TIMEOUT,
                tls: ssl.SSLContext | None = None) -> float | None:
    """etcd's clock at host:port minus this node's, from its ``Date`` header; None if unreadable.
    ``tls``: read it over https with this context."""
    conn = (http.client.HTTPSConnection(host, port, timeout=timeout, context=tls) if tls
            else http.client.HTTPConnection(host, port, timeout=timeout))
    try:
        sent = clock.local()
        conn.request("GET", "/version")
        resp = conn.getresponse()
        received = clock.local()
        resp.read()
        date = resp.getheader("Date")
        return date_offset(date, sent, received) if date else None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        log.debug("cannot read etcd's clock at %s:%d: %s", host, port, exc)
        return None
    finally:
        conn.close()


class ClockWatch(FollowHandler):
    def __init__(self, store: Store, keys: Keys, name: str, clock: Clock, stopping: threading.Event,
                 on_change: Callable[[], None] = lambda: None):
        self.store = store
        self.keys = keys
        self.name = name
        self.clock = clock
        self.stopping = stopping
        self.on_change = on_change
        self._follower: object = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Read etcd's clocks once now (so the node is judged before its chores start), then
        follow the node keys and read etcd's clocks periodically, in threads of their own. The first
        judgement is not announced: the node key, written after this, carries it."""
        self.poll_etcd(announce=False)
        self._follower = self.store.follow(self.keys.node(), self, name="clock-peers")
        threading.Thread(target=self._run, name="clock", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        follower = self._follower
        if follower is not None:
            follower.stop()  # type: ignore[attr-defined]

    def poll_etcd(self, announce: bool = True) -> None:
        changed = False
        try:
            tls = self.store.credentials.ssl_context() if self.store.tls else None
        except (OSError, ssl.SSLError) as exc:  # unreadable files: the store says so, more clearly
            log.debug("cannot read etcd's clock over TLS: %s", exc)
            return
        for host, port in self.store.endpoints:
            changed |= self.clock.etcd_seen(f"{host}:{port}", etcd_offset(host, port, self.clock, tls=tls))
        if changed and announce:
            self._changed()

    def _run(self) -> None:
        name_this_thread()
        while not self._stop.wait(ETCD_EVERY) and not self.stopping.is_set():
            self.poll_etcd()

    def _changed(self) -> None:
        try:
            self.on_change()
        except Exception:  # the judgement stands; the next refresh publishes it
            log.exception("clock: publishing the clock's state failed")

    # ---- FollowHandler -------------------------------------------------------------------------

    def reset(self, kvs: list[KV], revision: int) -> None:
        if self.clock.peers_only({kv.key.rsplit("/", 1)[1] for kv in kvs}):
            self._changed()

    def events(self, events: list[Event], revision: int) -> None:
        changed = False
        for ev in events:
            peer = ev.kv.key.rsplit("/", 1)[1]
            if peer == self.name:
                continue
            if ev.kind != "put":
                changed |= self.clock.peer_gone(peer)
                continue
            published = codec.unpack(ev.kv.value).get("at")
            if isinstance(published, (int, float)):
                changed |= self.clock.peer_seen(peer, float(published))
        if changed:
            self._changed()
