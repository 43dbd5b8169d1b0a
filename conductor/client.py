"""The Python client: everything the CLI does, for other programs too.

>>> from conductor import Client
>>> with Client(etcd="127.0.0.1:2379") as c:
...     job = c.post("examples/hello.yaml")
...     c.wait(job)["state"]
'COMPLETED'
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from . import codec, ids, spec, states, views
from .board import Board
from .errors import ConductorError, NotFound, WaitTimeout
from .keys import Keys
from .ops import KV, Event
from .settings import LOCAL_ETCD, default_etcd, default_namespace, default_user
from .store import FollowHandler, Store


class Client:
    def __init__(self, etcd: str | list[str] | None = None, namespace: str | None = None,
                 user: str | None = None, timeout: float = 5.0, store: Store | None = None):
        endpoints = etcd or default_etcd() or [LOCAL_ETCD]
        self.store = store or Store(endpoints, timeout=timeout)
        self.keys = Keys(namespace or default_namespace())
        self.user = user or default_user()
        self.board = Board(self.store, self.keys)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- posting -----------------------------------------------------------------------------

    def validate(self, job: str | Path | dict[str, Any]) -> dict[str, Any]:
        """Load (a path, ``-`` for stdin, or a map) and validate a job; raises InvalidSpec."""
        data = spec.load_file(str(job)) if isinstance(job, (str, Path)) else job
        return spec.validate_job(data)

    def post(self, job: str | Path | dict[str, Any], *, paused: bool = False) -> str:
        """Validate and post a job; returns its id. Nothing is written if validation fails."""
        normalised = self.validate(job)
        if paused:
            normalised["paused"] = True
        source: dict[str, Any] = {"kind": "file", "path": str(job)} if isinstance(job, (str, Path)) else {"kind": "api"}
        return self.board.post(normalised, self.user, source=source)

    # ---- resolving ids -------------------------------------------------------------------------

    def locate(self, some_id: str) -> tuple[ids.ParsedId, str, str]:
        """(parsed id, full id, owner) for a job, layer or task id, or a unique job id prefix."""
        parsed = ids.parse_id(some_id)
        job = parsed.job if len(parsed.job) == ids.JOB_ID_LEN else self.board.resolve_job(parsed.job)
        owner = self.board.owner(job)
        full = job + some_id.strip()[len(parsed.job):]
        return ids.parse_id(full), full, owner

    # ---- reading -------------------------------------------------------------------------------

    def jobs(self, *, user: str | None = None, all_users: bool = False, state: str | None = None,
             name: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        return views.list_jobs(self.board, user=user or self.user, all_users=all_users, state=state, name=name,
                               limit=limit, offset=offset)

    def show(self, some_id: str) -> dict[str, Any]:
        """A job as a tree of layers and tasks, a layer with its tasks, or a task with its history,
        result and log tail, depending on what the id names."""
        parsed, full, owner = self.locate(some_id)
        if parsed.kind == "job":
            return {"kind": "job", **views.job_tree(self.board, full, owner)}
        if parsed.kind == "layer":
            return {"kind": "layer", **views.layer_detail(self.board, full, owner)}
        return {"kind": "task", **views.task_detail(self.board, full, owner)}

    def job(self, job_id: str) -> dict[str, Any]:
        _, full, owner = self.locate(job_id)
        found = self.board.load(self.keys.job(owner, full))
        if not found:
            raise NotFound(f"no job {job_id}")
        return views.with_etag(*found)

    def task(self, task_id: str) -> dict[str, Any]:
        parsed, full, owner = self.locate(task_id)
        if parsed.kind != "task":
            raise NotFound(f"{task_id} is not a task id")
        return views.task_detail(self.board, full, owner)

    def result(self, task_id: str) -> bytes | None:
        _, full, owner = self.locate(task_id)
        kv = self.store.get(self.keys.result(owner, full))
        return codec.unpack(kv.value).get("data") if kv else None

    def nodes(self) -> list[dict[str, Any]]:
        return views.list_nodes(self.store, self.keys)

    def counts(self, job_id: str) -> dict[str, int]:
        return views.job_counts(self.store, self.keys, [self.job(job_id)])[0]

    # ---- following -----------------------------------------------------------------------------

    def wait(self, job_id: str, *, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any], dict[str, int]], None] | None = None) -> dict[str, Any]:
        """Follow a job (by watches, not polling) until it is COMPLETED or ERRORED; returns it.

        ``on_progress(job, counts)`` is called on every change. Raises WaitTimeout."""
        _, full, owner = self.locate(job_id)
        watch = _JobWatch()
        followers = [self.store.follow(self.keys.job(owner, full), watch.job_handler(), name="wait-job"),
                     self.store.follow(self.keys.tally(owner, full), watch.tally_handler(), name="wait-tally"),
                     self.store.follow(self.keys.claim(full + "."), watch.claim_handler(), name="wait-claims")]
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with watch.cond:
                while True:
                    if watch.job and on_progress:
                        on_progress(watch.job, watch.counts())
                    if watch.job and watch.job["state"] in (states.COMPLETED, states.ERRORED) and watch.ready():
                        return watch.job
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise WaitTimeout(f"job {full} is still {watch.job['state'] if watch.job else 'unknown'} "
                                          f"after {timeout:g}s")
                    watch.cond.wait(remaining if remaining is not None else 1.0)
        finally:
            for f in followers:
                f.stop()


class _JobWatch:
    """The state ``wait`` follows: the job value, its tallies and its running claims."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.job: dict[str, Any] | None = None
        self.tallies: dict[str, str] = {}
        self.claims: set[str] = set()
        self._listed = [False, False, False]

    def ready(self) -> bool:
        return all(self._listed)

    def counts(self) -> dict[str, int]:
        by_state = {s: 0 for s in (states.COMPLETED, states.ERRORED, states.SKIPPED)}
        for s in self.tallies.values():
            by_state[s] = by_state.get(s, 0) + 1
        total = (self.job or {}).get("tasks", 0)
        done = sum(by_state.values())
        return {"total": total, "done": done, "running": len(self.claims),
                "completed": by_state[states.COMPLETED], "errored": by_state[states.ERRORED],
                "skipped": by_state[states.SKIPPED]}

    def _handler(self, slot: int, reset: Callable[[list[KV]], None], apply: Callable[[Event], None]) -> FollowHandler:
        watch = self

        class Handler(FollowHandler):
            def reset(self, kvs: list[KV], revision: int) -> None:
                with watch.cond:
                    reset(kvs)
                    watch._listed[slot] = True
                    watch.cond.notify_all()

            def events(self, events: list[Event], revision: int) -> None:
                with watch.cond:
                    for ev in events:
                        apply(ev)
                    watch.cond.notify_all()

        return Handler()

    def job_handler(self) -> FollowHandler:
        def reset(kvs: list[KV]) -> None:
            self.job = views.with_etag(codec.unpack(kvs[0].value), kvs[0]) if kvs else None

        def apply(ev: Event) -> None:
            if ev.kind == "put":
                self.job = views.with_etag(codec.unpack(ev.kv.value), ev.kv)
            else:
                raise ConductorError("the job was removed while waiting for it")

        return self._handler(0, reset, apply)

    def tally_handler(self) -> FollowHandler:
        def state_of(key: str) -> tuple[str, str]:
            parts = key.rsplit("/", 2)
            return parts[2], parts[1]

        def reset(kvs: list[KV]) -> None:
            self.tallies = dict(state_of(kv.key) for kv in kvs)

        def apply(ev: Event) -> None:
            task, state = state_of(ev.kv.key)
            if ev.kind == "put":
                self.tallies[task] = state
            elif self.tallies.get(task) == state:
                del self.tallies[task]

        return self._handler(1, reset, apply)

    def claim_handler(self) -> FollowHandler:
        def reset(kvs: list[KV]) -> None:
            self.claims = {kv.key.rsplit("/", 1)[1] for kv in kvs}

        def apply(ev: Event) -> None:
            task = ev.kv.key.rsplit("/", 1)[1]
            (self.claims.add if ev.kind == "put" else self.claims.discard)(task)

        return self._handler(2, reset, apply)
