"""etcd membership of a laptop cluster: who the members are, how healthy, promotion and removal.

Every call goes through :class:`conductor.store.Store` (the one module speaking gRPC). A learner is
promoted with :func:`promote_when_caught_up`, which retries while etcd refuses because the learner
is behind the leader's log. Errors are the Store's (StoreUnavailable, StoreError).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar

from .errors import StoreError, StoreUnavailable
from .store import Store

log = logging.getLogger("conductor.members")
T = TypeVar("T")
RECONFIG_PATIENCE = 30.0


def patiently(change: Callable[[], T], patience: float = RECONFIG_PATIENCE, also: tuple[str, ...] = ()) -> T:
    """Run a membership change, waiting out etcd's refusals while a member joined or came back
    less than a few seconds ago ("unhealthy cluster", UNAVAILABLE: its strict reconfiguration
    check) or while a leader is elected; ``also``: more gRPC status names to wait out. Raises the
    last error after ``patience``."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return change()
        except StoreError as exc:
            passing = isinstance(exc, StoreUnavailable) or getattr(exc, "code", "") in also
            if not passing or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def endpoint_of(url: str) -> str:
    """``https://10.0.0.1:2379`` -> ``10.0.0.1:2379``."""
    return url.split("://", 1)[-1].rstrip("/")


def client_endpoints(members: list[dict[str, Any]]) -> list[str]:
    """The client endpoints of started members (a member added but not started has none)."""
    return [endpoint_of(url) for m in members for url in m["client_urls"][:1]]


def initial_cluster(members: list[dict[str, Any]]) -> str:
    """etcd's ``--initial-cluster`` for a new member: every started member's name and peer URLs
    (the new member, just added, has no name yet: the caller appends it)."""
    return ",".join(f"{m['name']}={url}" for m in members if m["name"] for url in m["peer_urls"])


def health(store: Store, members: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every member with ``healthy``, ``leader`` (is it the leader), ``raft_index`` and ``lag``
    (raft entries behind the leader; None when unknown), asking each member directly."""
    members = store.members() if members is None else members
    out = []
    for m in members:
        row = {**m, "healthy": False, "leader": False, "raft_index": None, "lag": None, "error": ""}
        endpoints = client_endpoints([m])
        if not endpoints:
            row["error"] = "not started"
        else:
            try:
                status = store.endpoint_status(endpoints[0])
                row.update(healthy=status["leader"] != 0, leader=status["leader"] == m["id"],
                           raft_index=status["raft_index"])
            except StoreError as exc:
                row["error"] = str(exc).split(": ", 1)[-1][:80]
        out.append(row)
    top = max((r["raft_index"] for r in out if r["leader"] and r["raft_index"] is not None), default=None)
    for row in out:
        if top is not None and row["raft_index"] is not None:
            row["lag"] = max(0, top - row["raft_index"])
    return out


def promote_when_caught_up(store: Store, member_id: int, timeout: float = 120.0,
                           stop: Callable[[], bool] = lambda: False) -> bool:
    """Promote learner ``member_id`` to a voting member, retrying (every half second) while etcd
    refuses because it has not caught up or has no leader. True once it votes (or already did);
    False when ``timeout`` passed or ``stop()`` said so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop():
        try:
            mine = [m for m in store.members() if m["id"] == member_id]
            if mine and not mine[0]["learner"]:
                return True
            store.member_promote(member_id)
            log.info("etcd member %x promoted from learner to voting member", member_id)
            return True
        except (StoreUnavailable, StoreError) as exc:
            log.debug("promotion of %x not yet: %s", member_id, exc)
        time.sleep(0.5)
    return False


def remove(store: Store, member_id: int) -> None:
    """Remove ``member_id``; refuses (StoreError) to remove the last voting member, which would
    leave no cluster at all."""
    members = store.members()
    voters = [m for m in members if not m["learner"]]
    if [m["id"] for m in voters] == [member_id]:
        raise StoreError("this is the cluster's only voting member: it cannot leave (stop it instead, "
                         "or let another machine join first)")
    patiently(lambda: store.member_remove(member_id))
