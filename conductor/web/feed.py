"""The live feeds: what changed, for the open pages and event streams.

:class:`KeyWatch` tells one live UI page that something it shows changed (narrow watches, nothing
decoded: see the class). :class:`Feed` gives the API's event streams (``/api/v1/events``) transition
records, from ONE etcd watch per server: it runs :meth:`conductor.Client.events` (every user's
records) in a thread while anyone listens, and hands each revision's records to the subscribers' event loops, one wake-up per
batch. A :class:`Subscription` filters by ids and user into a bounded queue; a subscriber that falls
behind is told to reload rather than slowing the others. The SSE writer
(:func:`conductor.web.sse.event_stream`) drains a subscription a batch at a time.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import Any

from ..client import Client
from ..errors import ConductorError, StoreUnavailable
from ..store import Store

log = logging.getLogger("conductor.web")

QUEUE_SIZE = 1000  # records a slow subscriber may fall behind before it is told to reload
FEED_IDLE = 30.0  # seconds the shared watch outlives its last subscriber (a page reloading keeps it)


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



CHANGED: dict[str, Any] = {"kind": "changed"}  # what a KeyWatch yields: something under its prefixes changed
Watched = tuple[str, bool]  # (a key prefix, or with True one exact key)


class KeyWatch:
    """Changes under a few key prefixes, for one live page (:mod:`.ui_live`): an async iterator that
    yields :data:`CHANGED` (coalesced: at most one waiting) when etcd reports a write there.

    Cheap by design, as the page only needs to know *that* something changed before it reads its
    model again, and reads it at most once per ``hold`` seconds anyway:

    - etcd watches on just the keys the page shows (a job page: that job's job, layer and task
      keys), opened with the page's own client (so etcd auth holds, and a user watches only their
      keys), without ``prev_kv``, and bare (no event becomes a Python object, no value is decoded);
    - a watch that reported a change is closed for ``hold`` seconds; then the page is read again
      (whatever happened meanwhile is in that read) and watched from the revision before that
      read. A job finishing thousands of tasks a second costs a page one etcd status request,
      one watch and its first event a second, instead of every write (the price: one more read
      of the page after a lone change).

    One thread per prefix follows it from ``revision`` (taken before the page's first read, so
    nothing falls between the read and the watch). When etcd was away, or the watch was compacted
    or canceled, the page is read again the same way (backoff 0.1 to 2 s). A refused
    watch (the user lost access) yields one last change: the page's next read says what became
    of it."""

    def __init__(self, store: Store, prefixes: list[Watched], revision: int, hold: float = 1.0):
        self.store = store
        self.hold = hold
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()
        self._stop = threading.Event()
        self._streams: set[Any] = set()
        self._lock = threading.Lock()
        for prefix, exact in prefixes:
            threading.Thread(target=self._follow, args=(prefix, exact, revision), name="web-keywatch",
                             daemon=True).start()

    def _poke(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.ready.set)
        except RuntimeError:  # the loop is closed: the server is stopping
            self._stop.set()

    def _follow(self, prefix: str, exact: bool, revision: int) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                if not revision:  # read the page again, and watch from before that read
                    revision = self.store.revision() + 1
                    self._poke()
                changed = self._watch(prefix, exact, revision)
            except StoreUnavailable:
                changed = False
            except ConductorError as exc:  # permission, auth: the page's next read names it
                if not self._stop.is_set():  # (else: our own cancel)
                    log.info("a live page's watch on %s ended: %s", prefix, exc)
                    self._poke()
                return
            revision = 0
            if changed:  # quiet for a while: the page is read once a hold at most anyway
                delay, wait = 0.1, self.hold
            else:  # the watch broke
                delay, wait = min(delay * 2, 2.0), delay
            if self._stop.wait(wait):
                return

    def _watch(self, prefix: str, exact: bool, revision: int) -> bool:
        """Watch until the first change (True) or until the watch breaks (False)."""
        stream = self.store.watch(prefix, revision, exact=exact, bare=True)
        with self._lock:
            self._streams.add(stream)
        try:
            if self._stop.is_set():
                return False
            for batch in stream:
                if batch.broken:
                    return False
                if batch.changes:
                    self._poke()
                    return True
            return False
        finally:
            with self._lock:
                self._streams.discard(stream)
            stream.cancel()

    def __aiter__(self) -> "KeyWatch":
        return self

    async def __anext__(self) -> dict[str, Any]:
        await self.ready.wait()
        self.ready.clear()
        return CHANGED

    async def aclose(self) -> None:
        self._stop.set()
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.cancel()
