"""List-then-watch, kept alive: the one way every part of Conductor follows a prefix of etcd.

A :class:`Follower` opens a watch on the prefix from now, lists the prefix at the revision etcd
reports for the watch's creation (one snapshot, paged at that revision), hands the listing to its
handler, then hands it the watch's events (all later than that revision). When the watch breaks (etcd restarted, the
connection dropped, the revision was compacted, etcd canceled it) the view is marked stale, the
follower waits with growing, jittered backoff (0.1 s to 2 s, so it never spins while etcd is
down) and lists again. Handlers are called from the follower's own thread only.

A handler that raises is not a broken watch: the follower stops and hands the error to the
handler's ``failed`` (by default the error is logged and re-raised in the follower's thread, which
ends it). Owners that wait on a follower (``Client.wait``, the node's stream) override ``failed`` so
the error reaches them instead of looping or hanging.
"""
from __future__ import annotations

import logging
import random
import threading
from typing import Any, Protocol

from .errors import StoreError
from .ops import KV, Event
from .threadname import name_this_thread



class Source(Protocol):
    """What a follower needs of a store (conductor.store.Store is one): a paged listing at one
    revision, and a watch from a revision."""

    def scan(self, prefix: str, *, revision: int = 0) -> tuple[list[KV], int]: ...

    def watch(self, prefix: str, start_revision: int) -> Any: ...

log = logging.getLogger("conductor.store")


class FollowHandler:
    """What a :class:`Follower` calls.

    ``reset(kvs, revision)`` gets each full listing (the first, and one after every break);
    ``events(events, revision)`` gets each watch response (the events of a revision always arrive
    together); ``synced(flag)`` says when the view is live or stale."""

    def reset(self, kvs: list[KV], revision: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def events(self, events: list[Event], revision: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def synced(self, flag: bool) -> None:
        pass

    def failed(self, exc: BaseException) -> None:
        """A handler raised ``exc``; the follower has stopped. Override to pass it on."""
        log.error("a watch handler failed; the watch is stopped", exc_info=exc)


class HandlerFailed(Exception):
    """Carries a handler's exception out of the watch loop (never confused with a broken watch)."""


class Follower(threading.Thread):
    def __init__(self, store: Source, prefix: str, handler: FollowHandler, name: str):
        super().__init__(name=name, daemon=True)
        self.store = store
        self.prefix = prefix
        self.handler = handler
        self._stop_event = threading.Event()
        self._stream: Any = None
        self.resets = 0

    def stop(self) -> None:
        self._stop_event.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()

    def run(self) -> None:
        name_this_thread()
        delay = 0.1
        while not self._stop_event.is_set():
            try:
                try:
                    self._list_and_watch()
                    delay = 0.1
                except (StoreError, ValueError) as exc:
                    if self._stop_event.is_set():
                        break
                    log.debug("watch on %s broke: %s", self.prefix, exc)
                self._call(self.handler.synced, False)
            except HandlerFailed as failure:
                self._stop_event.set()
                self.handler.failed(failure.__cause__ or failure)
                return
            if self._stop_event.wait(delay * (0.5 + random.random())):
                break
            delay = min(delay * 2, 2.0)

    def _list_and_watch(self) -> None:
        # The watch opens first, "from now" (start revision 0), and the listing is read at the
        # revision etcd reports for its creation. Listing first and then watching from the listing's
        # revision + 1 is equally exact, but when anything is written between the two (a task
        # running while Client.wait sets up), etcd starts that watch "unsynced" and only catches it
        # up in a loop that runs every 100 ms: that was the ~100 ms tail of Client.wait.
        self._stream = self.store.watch(self.prefix, 0)
        try:
            if not self._stop_event.is_set():
                self._follow(iter(self._stream))
        finally:  # whatever ended it (a broken watch, a listing refused, a handler's error)
            self._stream.cancel()

    def _follow(self, batches: Any) -> None:
        created = next(batches, None)
        if created is None or created.broken or not created.created:  # refused: a listing says why
            self.store.scan(self.prefix)
            return
        kvs, revision = self.store.scan(self.prefix, revision=created.revision)
        self.resets += 1
        self._call(self.handler.reset, kvs, revision)
        self._call(self.handler.synced, True)
        if created.events:  # never at creation; kept so that no event can be lost
            self._call(self.handler.events, created.events, created.revision)
        for batch in batches:
            if batch.broken:
                log.info("watch on %s was %s; listing again", self.prefix, batch.broken)
                return
            if batch.events:
                self._call(self.handler.events, batch.events, batch.revision)

    @staticmethod
    def _call(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            raise HandlerFailed(repr(exc)) from exc
