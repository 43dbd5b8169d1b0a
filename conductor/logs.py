"""Printing and following a task's log tail (``conductor logs TASK [-f]``).

A running task's node rewrites ``users/<user>/logs/<task>`` about once a second while its output
grows; the finish writes the last tail with the task's final state, in one transaction. Following
is two watches (the log key and the task key); new bytes are what the size grew by, and when more
than the kept tail was written between two updates, a marker says how much was not kept.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from . import codec, states
from .keys import Keys
from .ops import KV, Event
from .follow import FollowHandler
from .store import Store


class LogFollower:
    def __init__(self, store: Store, keys: Keys, user: str, task_id: str, write: Callable[[bytes], None]):
        self.store = store
        self.keys = keys
        self.user = user
        self.task_id = task_id
        self.write = write
        self.cond = threading.Condition()
        self.entry: dict[str, Any] | None = None
        self.state: str | None = None
        self.state_rev = 0
        self.log_rev = 0
        self.printed = 0
        self.attempt: int | None = None
        self.listed = [False, False]

    def show(self, entry: dict[str, Any]) -> None:
        """Write what ``entry`` adds to what was written already."""
        data = entry.get("data") or b""
        size = int(entry.get("size") or len(data))
        if self.attempt is not None and entry.get("attempt") != self.attempt:
            self.write(f"\n--- attempt {entry.get('attempt')} on {entry.get('node')} ---\n".encode())
            self.printed = 0
        self.attempt = entry.get("attempt")
        new = size - self.printed
        if new <= 0:
            return
        if new > len(data):
            if self.printed or size > len(data):
                self.write(f"[... {size - len(data) - self.printed} bytes not kept in etcd; the node has the "
                           f"full log at {entry.get('path')} ...]\n".encode())
            self.write(data)
        else:
            self.write(data[len(data) - new:])
        self.printed = size

    def run(self, follow: bool, timeout: float | None = None,
            stop: threading.Event | None = None) -> dict[str, Any] | None:
        kv = self.store.get(self.keys.log(self.user, self.task_id))
        if not follow:
            if kv is not None:
                self.entry = codec.unpack(kv.value)
                self.show(self.entry)
            return self.entry
        followers = [self.store.follow(self.keys.log(self.user, self.task_id), self._handler(0, self._on_log), "logs"),
                     self.store.follow(self.keys.task(self.user, self.task_id), self._handler(1, self._on_task),
                                       "logs-task")]
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self.cond:
                while True:
                    if self.listed == [True, True] and self.state in states.FINAL:
                        last = self.store.get(self.keys.log(self.user, self.task_id))  # its final tail
                        if last is not None:
                            self._on_log(last)
                        return self.entry
                    left = None if deadline is None else deadline - time.monotonic()
                    if (left is not None and left <= 0) or (stop is not None and stop.is_set()):
                        return self.entry
                    self.cond.wait(1.0 if left is None else min(left, 1.0))
        finally:
            for f in followers:
                f.stop()

    def _on_log(self, kv: KV) -> None:
        self.entry = codec.unpack(kv.value)
        self.show(self.entry)
        self.log_rev = max(self.log_rev, kv.mod_revision)

    def _on_task(self, kv: KV) -> None:
        self.state = codec.unpack(kv.value).get("state")
        self.state_rev = kv.mod_revision

    def _handler(self, slot: int, apply: Callable[[KV], None]) -> FollowHandler:
        outer = self

        class Handler(FollowHandler):
            def reset(self, kvs: list[KV], revision: int) -> None:
                with outer.cond:
                    for kv in kvs:
                        apply(kv)
                    if slot == 0:
                        outer.log_rev = max(outer.log_rev, revision)
                    outer.listed[slot] = True
                    outer.cond.notify_all()

            def events(self, events: list[Event], revision: int) -> None:
                with outer.cond:
                    for ev in events:
                        if ev.kind == "put":
                            apply(ev.kv)
                    if slot == 0:
                        outer.log_rev = max(outer.log_rev, revision)
                    outer.cond.notify_all()

        return Handler()
