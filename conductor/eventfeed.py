"""Following etcd's revision log as transition records (see :mod:`conductor.events`).

Unlike :mod:`conductor.follow` this never lists: it watches the whole namespace from one revision
(``since``, or the current revision + 1), so etcd replays every write from there in the order it
applied them, and one stream keeps jobs, layers, tasks, nodes and fires in one order. Keys that
make no transition (logs, claims, the queue) are dropped here, on the client. When the watch
breaks (etcd restarted, the connection dropped: StoreUnavailable) it is opened again from the
revision after the last one delivered, after a growing, jittered backoff (0.1 s to 2 s): nothing is
skipped and nothing repeated. A start revision etcd has compacted away raises
:class:`HistoryCompacted`, never a silent jump; other store errors (permission, TLS) are raised.
"""
from __future__ import annotations

import logging
import random
import threading
from typing import Any, Callable

from . import events
from .errors import HistoryCompacted, StoreUnavailable
from .keys import Keys
from .ops import Event
from .store import Store

log = logging.getLogger("conductor.events")

Deliver = Callable[[list[events.Record]], None]


class EventFeed:
    """Calls ``deliver(records)`` once per etcd revision that made wanted records, in revision
    order, until :meth:`stop`. ``next_revision`` is where a restart would resume."""

    def __init__(self, store: Store, keys: Keys, wanted: events.Filter, deliver: Deliver,
                 since: int | None = None, started: Callable[[int], None] | None = None,
                 prefix: str | None = None):
        self.store = store
        self.keys = keys
        self.prefix = prefix or keys.namespace  # a user under etcd auth may watch only their own
        self.wanted = wanted
        self.deliver = deliver
        self.next_revision = since if since is not None else 0
        self.started = started
        self._stopped = threading.Event()
        self._stream: Any = None

    def stop(self) -> None:
        """Stop following (from any thread); :meth:`run` returns soon after."""
        self._stopped.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()

    def run(self) -> None:
        """Follow until stopped. Raises HistoryCompacted, and any StoreError but StoreUnavailable
        (etcd being away is waited out)."""
        if not self.next_revision:
            self.next_revision = self.store.revision() + 1  # nothing old: from now on
        if self.started is not None:
            self.started(self.next_revision)
        delay = 0.1
        while not self._stopped.is_set():
            try:
                self._watch()
                delay = 0.1
            except StoreUnavailable as exc:  # others (permission, TLS, auth) cannot pass by waiting: raised
                if self._stopped.is_set():
                    return
                log.info("the events watch broke (%s); watching again from revision %d", exc, self.next_revision)
            if self._stopped.wait(delay * (0.5 + random.random())):
                return
            delay = min(delay * 2, 2.0)

    def _watch(self) -> None:
        self._stream = self.store.watch(self.prefix, self.next_revision, prev_kv=True)
        if self._stopped.is_set():
            self._stream.cancel()
            return
        for batch in self._stream:
            if batch.broken == "compacted":
                raise HistoryCompacted(self.next_revision, batch.compact_revision)
            if batch.broken:
                return  # canceled by etcd: watch again from where we are
            self._take(batch.events)

    def _take(self, batch: list[Event]) -> None:
        """Deliver a watch response's events one revision at a time, and move past them."""
        start = 0
        while start < len(batch):
            rev = batch[start].kv.mod_revision
            end = start
            while end < len(batch) and batch[end].kv.mod_revision == rev:
                end += 1
            records = events.select(self.keys, batch[start:end], self.wanted)
            if records and not self._stopped.is_set():
                self.deliver(records)
            self.next_revision = rev + 1
            start = end
