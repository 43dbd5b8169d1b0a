"""Is this node's clock to be trusted? The rules, and the one object that holds the answer.

A node whose wall clock ran days ahead once removed, as its retention chore, jobs that had ended
seconds before. So nothing that destroys or fires by time trusts one node's clock alone: each node
compares its clock with the cluster's *reference time* and runs those chores only when it is
within :data:`BOUND` of it.

The reference is the median of what this node sees of other clocks, each as an offset (other
clock minus this one): every live peer's clock (published in its node key, read as the key's put
event arrives) and etcd's own clock (the ``Date`` header of each endpoint's ``/version``). With an
even number of samples the median is the middle sample nearer to etcd's, so that one skewed peer
beside one correct node cannot make the correct one look skewed (etcd breaks the tie); a lone node
is judged by etcd alone. With no sample at all (no peer, etcd's HTTP side unreachable) the clock
is *unjudged*, and time-based chores wait too.

Everything here is pure but :class:`Clock`, which keeps the samples (fed by
:mod:`conductor.clockwatch`) and logs, once each way, when the node becomes skewed or recovers.
"""
from __future__ import annotations

import logging
import threading
import time
from statistics import median
from typing import Any, Sequence

log = logging.getLogger("conductor.node")

BOUND = 30.0  # seconds a node's clock may differ from the reference before it is skewed


def reference_offset(peers: Sequence[float], etcd: Sequence[float]) -> float | None:
    """This node's offset to the reference time (add it to the local clock), or None without samples.

    The median of every sample; with an even count, of the two middle samples the one nearer to
    etcd's (median) offset, or their mean when there is no etcd sample."""
    samples = sorted([*peers, *etcd])
    if not samples:
        return None
    middle = len(samples) // 2
    if len(samples) % 2:
        return samples[middle]
    low, high = samples[middle - 1], samples[middle]
    if not etcd:
        return (low + high) / 2
    anchor = median(etcd)
    return low if abs(low - anchor) <= abs(high - anchor) else high


def is_skewed(offset: float | None, bound: float = BOUND) -> bool:
    """Skewed: judged, and more than ``bound`` seconds off the reference."""
    return offset is not None and abs(offset) > bound


def date_offset(date_header: str, sent: float, received: float) -> float:
    """The offset of a server's clock from its HTTP ``Date`` header, taken between ``sent`` and
    ``received`` (local clock). The header has whole seconds, cut down: its clock read somewhere in
    [date, date + 1), so half a second is added. Raises ValueError for a malformed header."""
    from email.utils import parsedate_to_datetime  # here: every client imports this module, only nodes read clocks

    try:
        stamp = parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"bad Date header {date_header!r}: {exc}") from None
    return stamp + 0.5 - (sent + received) / 2


def ended_in_future(ended: float, now: float, bound: float = BOUND) -> bool:
    """A stamp later than ``now`` by more than ``bound`` was written by a clock running ahead:
    its age cannot be judged, so nothing is removed on its account."""
    return ended - now > bound


class Clock:
    """This node's wall clock and its judgement against the cluster's. Thread-safe.

    ``shift`` moves this node's whole notion of wall time (tests of skewed clocks: ``conductor run
    --clock-skew``); everything that stamps or judges time on the node reads :meth:`local`."""

    def __init__(self, shift: float = 0.0, bound: float = BOUND):
        self.shift = shift
        self.bound = bound
        self.offset: float | None = None
        self.skewed = False
        self.samples = 0
        self._peers: dict[str, float] = {}
        self._etcd: dict[str, float] = {}
        self._lock = threading.Lock()

    def local(self) -> float:
        """This node's wall clock (with the test shift)."""
        return time.time() + self.shift

    def reference(self) -> float:
        """The cluster's reference time as this node best knows it."""
        return self.local() + (self.offset or 0.0)

    def chore_time(self) -> float | None:
        """The reference time for a chore that destroys or fires by time, or None when this node
        must not run one now (its clock is skewed, or not judged yet)."""
        with self._lock:
            if self.offset is None or self.skewed:
                return None
        return self.reference()

    def record(self) -> dict[str, Any]:
        """The fields this node publishes in its node key: ``clock_offset``, how far this node's
        clock is ahead of the reference in seconds (negative: behind; None: not judged yet), and
        ``clock_skewed``."""
        with self._lock:
            offset, skewed = self.offset, self.skewed
        return {"clock_offset": None if offset is None else round(-offset, 3), "clock_skewed": skewed}

    # ---- samples (from conductor.clockwatch) -----------------------------------------------------

    def peer_seen(self, peer: str, published: float) -> bool:
        """A peer wrote its node key with its clock reading ``published``. True (like the other
        updates) when the judgement changed: skewed, recovered, judged or no longer judged."""
        return self._update(lambda: self._peers.__setitem__(peer, published - self.local()))

    def peer_gone(self, peer: str) -> bool:
        return self._update(lambda: self._peers.pop(peer, None))

    def peers_only(self, alive: set[str]) -> bool:
        """Forget samples of peers not in ``alive`` (after a new listing of the node keys)."""
        return self._update(lambda: [self._peers.pop(p) for p in list(self._peers) if p not in alive])

    def etcd_seen(self, endpoint: str, offset: float | None) -> bool:
        """etcd's clock at ``endpoint`` is ``offset`` off this node's (None: it could not be read)."""
        if offset is None:
            return self._update(lambda: self._etcd.pop(endpoint, None))
        return self._update(lambda: self._etcd.__setitem__(endpoint, offset))

    def _update(self, change: Any) -> bool:
        with self._lock:
            change()
            judged = self.offset is not None
            self.offset = reference_offset(list(self._peers.values()), list(self._etcd.values()))
            self.samples = len(self._peers) + len(self._etcd)
            was, self.skewed = self.skewed, is_skewed(self.offset, self.bound)
            peers, members = len(self._peers), len(self._etcd)
        if self.skewed and not was:
            log.warning("this node's clock is %+.1fs off the cluster's reference time (the median of %d peer(s) and "
                        "%d etcd member(s)), more than %.0fs: it runs no retention, compaction or schedule "
                        "firing until its clock is fixed (it still runs tasks)", -(self.offset or 0.0), peers,
                        members, self.bound)
        elif was and not self.skewed:
            log.warning("this node's clock is back within %.0fs of the cluster's (%+.1fs off): retention, "
                        "compaction and schedule firing resume", self.bound, -(self.offset or 0.0))
        return was != self.skewed or judged != (self.offset is not None)
