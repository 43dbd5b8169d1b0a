"""A node's session: one lease and the node key on it.

The lease is granted here and then kept alive by the node's supervisor process
(:mod:`conductor.supervisor`), so renewals never wait on this interpreter. The supervisor reports
each renewal (with its round trip), a *lost* session (no renewal before the fence deadline: it has
already killed the running tasks) and an *expired* lease. If etcd comes back and the lease is still
alive (etcd extends leases when it restarts) the session carries on with it; if the lease has
expired, a new one is granted and the node key written again (a new incarnation), retried until it
works.
"""
from __future__ import annotations

from .exitcodes import Exit

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from . import codec, metrics
from .errors import ConductorError, LeaseLost, StoreError, StoreUnavailable
from .keys import Keys, lease_hex
from .ops import Put, absent
from .store import Store
from .supervision import Supervision

log = logging.getLogger("conductor.session")


class NameTaken(ConductorError):
    exit_code = Exit.BAD_INPUT


class Session:
    def __init__(self, store: Store, keys: Keys, name: str, ttl: int, info: Callable[[], dict[str, Any]],
                 supervision: Supervision, on_lost: Callable[[], None],
                 on_renewed: Callable[[int], None] | None = None):
        self.store = store
        self.keys = keys
        self.name = name
        self.ttl = ttl
        self.info = info
        self.supervision = supervision
        self.on_lost = on_lost
        self.on_renewed = on_renewed or (lambda lease: None)
        self.lease = 0
        self.lost = False
        self._expired = threading.Event()
        self._lock = threading.Lock()
        self._rtts: deque[tuple[float, float]] = deque(maxlen=256)  # (monotonic, ms)
        supervision.on("renewed", self._renewed)
        supervision.on("lost", self._lost)
        supervision.on("expired", self._expired_lease)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Grant a lease and write the node key and the lease's ``q/alive`` key on it (one
        transaction); raises NameTaken if a live node has the name. The alive key is what claims
        are fenced by and what tells every node, in its stream, that this lease ended."""
        sent = time.monotonic()
        lease = self.store.grant(self.ttl)
        value = codec.pack({**self.info(), "lease": lease_hex(lease)})
        alive = codec.pack({"node": self.name})
        res = self.store.txn([absent(self.keys.node(self.name))], [Put(self.keys.node(self.name), value, lease),
                                                                  Put(self.keys.alive(lease), alive, lease)])
        if not res.succeeded:
            self.store.revoke(lease)
            raise NameTaken(f"a live node is already named {self.name!r}; give this one another --name")
        with self._lock:
            self.lease = lease
            self.lost = False
        self.supervision.lease(lease, sent)
        log.info("node %s joined with lease %s (ttl %ds)", self.name, lease_hex(lease), self.ttl)

    def keep(self, stopping: threading.Event) -> None:
        """The session thread: grant a new lease whenever the old one expired, until stopped."""
        while not stopping.is_set():
            if not self._expired.wait(0.5):
                continue
            delay = 0.2
            while not stopping.is_set():
                try:
                    old = self.lease
                    self.open()
                    self._expired.clear()
                    self.on_renewed(self.lease)
                    log.info("node %s rejoined with a new lease %s (old %s expired)", self.name,
                             lease_hex(self.lease), lease_hex(old))
                    break
                except NameTaken:
                    log.error("node name %s is held by another live node; waiting", self.name)
                except StoreError as exc:
                    log.debug("could not rejoin yet: %s", exc)
                stopping.wait(delay)
                delay = min(delay * 2, 2.0)

    def close(self, revoke: bool = True) -> None:
        """Revoking deletes the node key and every claim left on the lease (the supervisor does it
        when it is closed; this is for a session without a running supervisor)."""
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

    def renewal_stats(self) -> dict[str, float | None]:
        """The last renewal's round trip and the worst in the last minute, in milliseconds."""
        cutoff = time.monotonic() - 60
        with self._lock:
            recent = [ms for at, ms in self._rtts if at >= cutoff]
            last = self._rtts[-1][1] if self._rtts else None
        return {"renewal_ms": last, "renewal_max_ms": max(recent) if recent else None}

    # ---- events from the supervisor ------------------------------------------------------------------

    def _renewed(self, lease: int, rtt_ms: float, ttl_left: int, was_fenced: bool) -> None:
        metrics.lease_renewed(self.name, rtt_ms)
        with self._lock:
            self._rtts.append((time.monotonic(), rtt_ms))
            if lease != self.lease:
                return
            was_lost, self.lost = self.lost, False
        if was_lost:
            log.warning("node %s: etcd is back and lease %s is still alive; carrying on", self.name,
                        lease_hex(lease))
            self.on_renewed(lease)

    def _lost(self, why: str) -> None:
        with self._lock:
            if self.lost:
                return
            self.lost = True
        metrics.self_fenced(self.name)
        log.error("node %s lost its session: %s; its running tasks were killed (self-fencing)", self.name, why)
        self.on_lost()

    def _expired_lease(self, lease: int) -> None:
        with self._lock:
            if lease != self.lease:
                return
        self._lost("the lease expired")
        self._expired.set()
