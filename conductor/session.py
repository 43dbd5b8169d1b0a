"""A node's session: one lease, kept alive from a thread of its own, and the node key on it.

The keepalive runs every TTL/3 whatever the rest of the node is doing. After each renewal etcd
confirms, the fence deadline moves to (time the renewal was sent + TTL - margin): etcd cannot
expire the lease before then. If renewals fail until that deadline, the session is *lost*: the
watchdog kills the running tasks and ``on_lost`` is called, once. If etcd comes back and the lease
is still alive (etcd extends leases when it restarts) the session carries on with it; if the lease
has expired, a new one is granted and the node key written again (a new incarnation).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from . import codec
from .errors import ConductorError, LeaseLost, StoreError, StoreUnavailable
from .fence import Fence
from .keys import Keys, lease_hex
from .ops import Put, absent
from .store import Store
from .threadname import name_this_thread

log = logging.getLogger("conductor.session")


class NameTaken(ConductorError):
    exit_code = 2


class Session:
    def __init__(self, store: Store, keys: Keys, name: str, ttl: int, info: Callable[[], dict[str, Any]],
                 fence: Fence, on_lost: Callable[[], None], on_renewed: Callable[[int], None] | None = None):
        self.store = store
        self.keys = keys
        self.name = name
        self.ttl = ttl
        self.info = info
        self.fence = fence
        self.on_lost = on_lost
        self.on_renewed = on_renewed or (lambda lease: None)
        self.margin = max(0.5, ttl / 4)
        self.lease = 0
        self.lost = False
        self.deadline = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session", daemon=True)
        self._lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Grant a lease and write the node key on it; raises NameTaken if a live node has the name."""
        sent = time.monotonic()
        lease = self.store.grant(self.ttl)
        value = codec.pack({**self.info(), "lease": lease_hex(lease)})
        res = self.store.txn([absent(self.keys.node(self.name))], [Put(self.keys.node(self.name), value, lease)])
        if not res.succeeded:
            self.store.revoke(lease)
            raise NameTaken(f"a live node is already named {self.name!r}; give this one another --name")
        with self._lock:
            self.lease = lease
            self.lost = False
        self._renewed(sent)
        log.info("node %s joined with lease %s (ttl %ds)", self.name, lease_hex(lease), self.ttl)

    def start(self) -> None:
        self._thread.start()

    def close(self, revoke: bool = True) -> None:
        """Stop renewing; revoking deletes the node key and every claim left on the lease."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.ttl)
        if revoke and self.lease:
            try:
                self.store.revoke(self.lease, timeout=2.0)
                log.info("node %s left (lease revoked)", self.name)
            except StoreError as exc:
                log.warning("could not revoke lease on the way out: %s", exc)

    def refresh_info(self) -> None:
        """Rewrite the node key (host facts change); on the current lease."""
        if self.lease and not self.lost:
            try:
                self.store.put(self.keys.node(self.name), codec.pack({**self.info(), "lease": lease_hex(self.lease)}),
                               self.lease)
            except (StoreUnavailable, LeaseLost):
                pass

    # ---- the keepalive loop ------------------------------------------------------------------------

    def _renewed(self, sent: float) -> None:
        self.deadline = sent + self.ttl - self.margin
        self.fence.deadline(self.deadline)

    def _run(self) -> None:
        name_this_thread()
        period = self.ttl / 3.0
        failing = False
        while not self._stop.wait(min(0.5, period) if (self.lost or failing) else period):
            sent = time.monotonic()
            try:
                ttl = self.store.keepalive(self.lease, timeout=max(0.5, min(period, self.deadline - sent)))
                failing = False
            except StoreError as exc:
                failing = True
                if time.monotonic() >= self.deadline and not self.lost:
                    self._lose(f"no lease renewal for {self.ttl - self.margin:.1f}s ({exc})")
                continue
            if ttl > 0:
                self._renewed(sent)
                if self.lost:
                    log.warning("node %s: etcd is back and lease %s is still alive; carrying on",
                                self.name, lease_hex(self.lease))
                    self.lost = False
                    self.on_renewed(self.lease)
                continue
            if not self.lost:
                self._lose("the lease expired")
            self._reopen()

    def _lose(self, why: str) -> None:
        with self._lock:
            self.lost = True
        log.error("node %s lost its session: %s; killing its running tasks (self-fencing)", self.name, why)
        self.fence.kill_all("session lost")
        try:
            self.on_lost()
        except Exception:
            log.exception("on_lost failed")

    def _reopen(self) -> None:
        try:
            old = self.lease
            self.open()
            self.on_renewed(self.lease)
            log.info("node %s rejoined with a new lease %s (old %s expired)", self.name,
                     lease_hex(self.lease), lease_hex(old))
        except NameTaken:
            log.error("node name %s is held by another live node; waiting", self.name)
        except StoreError as exc:
            log.debug("could not rejoin yet: %s", exc)
