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

from . import codec, ids, jobwatch, logs, loopguard, messages, resolve, retention, schedules, spec, templates, views
from . import events as eventlog
from .board import Board
from .control import Control, Result, Target
from .credentials import Credentials
from .errors import AuthFailed, InvalidSpec, NotFound, PermissionDenied
from .keys import Keys
from .ops import KV, Event
from .settings import LOCAL_ETCD, default_etcd, default_namespace, default_user
from .eventfeed import EventFeed
from .follow import FollowHandler
from .store import Store


class Client:
    """``credentials``: TLS files and an etcd user; default: from ``CONDUCTOR_CACERT``, ``_CERT``,
    ``_KEY``, ``_USER``, ``_PASSWORD``, ``_PASSWORD_FILE``.

    Who you are: with etcd auth (a password), the etcd user the credentials name, always (etcd's
    access control then decides what you may read and change). Without it (a laptop on its own),
    ``user``, else the etcd user name given, else ``CONDUCTOR_USER`` or the login name."""

    def __init__(self, etcd: str | list[str] | None = None, namespace: str | None = None,
                 user: str | None = None, timeout: float = 5.0, store: Store | None = None,
                 credentials: Credentials | None = None):
        endpoints = etcd or default_etcd() or [LOCAL_ETCD]
        creds = credentials if credentials is not None else store.credentials if store else Credentials.from_env()
        self.store = store or Store(endpoints, timeout=timeout, credentials=creds)
        self.store.space.announce = False  # a refused write's error already says what to do
        self.keys = Keys(namespace or default_namespace())
        if creds.auth and user and user != creds.user:
            raise InvalidSpec("user", f"with etcd credentials you act as {creds.user!r}, not {user!r}")
        self.user = creds.user if creds.auth else (user or creds.user or default_user())
        self.board = Board(self.store, self.keys)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- posting -----------------------------------------------------------------------------

    def validate(self, job: str | Path | dict[str, Any], params: dict[str, str] | None = None) -> dict[str, Any]:
        """Load (a path, ``-`` for stdin, or a map) and validate a job; raises InvalidSpec."""
        data = spec.load_file(str(job)) if isinstance(job, (str, Path)) else job
        return templates.instantiate(data, params or {})[0]

    def post(self, job: str | Path | dict[str, Any], *, paused: bool = False,
             params: dict[str, str] | None = None, no_cache: bool = False) -> str:
        """Validate and post a job (a file with inputs takes ``params``); returns its id. Nothing is
        written if anything is wrong with it. ``no_cache``: no task of it takes a cached result."""
        data = spec.load_file(str(job)) if isinstance(job, (str, Path)) else job
        if no_cache:
            data = {**data, "no_cache": True}
        normalised, meta, secrets = templates.instantiate(data, params or {})
        if paused:
            normalised["paused"] = True
        source: dict[str, Any] = {"kind": "file", "path": str(job)} if isinstance(job, (str, Path)) else {"kind": "api"}
        if meta["inputs"]:
            source["inputs"] = templates.recorded_inputs(meta, params or {})
        return self.board.post(normalised, self.user, source=source, secrets=secrets, meta=meta)

    # ---- templates, messages, schedules --------------------------------------------------------

    def add_template(self, template: str | Path | dict[str, Any], replace: bool = False,
                     shared: bool = False) -> dict[str, Any]:
        """Store a template as yours, or (``shared``, admins only) publish it for every user."""
        data = spec.load_file(str(template)) if isinstance(template, (str, Path)) else template
        return messages.add_template(self.board, data, self.user, replace, shared)

    def templates(self) -> list[dict[str, Any]]:
        """Your templates and the published ones (``shared: true``)."""
        return messages.list_templates(self.board, self.user)

    def template(self, name: str) -> dict[str, Any]:
        return messages.get_template(self.board, name, self.user)

    def remove_template(self, name: str, shared: bool = False) -> None:
        messages.remove_template(self.board, name, self.user, shared)

    def loop_guards(self, all_users: bool = False) -> list[dict[str, Any]]:
        """Your loop guard records (every user's with ``all_users``: admins): which template's
        chain or posting was stopped, and why."""
        return loopguard.records(self.board, None if all_users else self.user)

    def resume_template(self, name: str) -> None:
        """Clear a template's loop guard record, so messages post it again (NotFound: none)."""
        loopguard.resume(self.board, self.user, name)

    def post_template(self, name: str, params: dict[str, str] | None = None, paused: bool = False,
                      no_cache: bool = False) -> str:
        template = messages.get_template(self.board, name, self.user)
        data = template["data"] if not paused else {**template["data"], "paused": True}
        if no_cache:
            data = {**data, "no_cache": True}
        return messages.post_template(self.board, {**template, "data": data}, params or {}, self.user,
                                      {"kind": "template"})

    def send(self, message: str, params: dict[str, str] | None = None) -> list[str]:
        """Post one job for every template triggered by ``message``; returns their ids."""
        return messages.send(self.board, message, params or {}, self.user, {"by": self.user})

    def add_schedule(self, name: str, cron: str, template: str, params: dict[str, str] | None = None,
                     overlap: str = "allow", catch_up: int = 0, replace: bool = False,
                     tz: str = "UTC") -> dict[str, Any]:
        return schedules.add(self.board, name, cron, template, params or {}, self.user, overlap, catch_up, replace,
                             tz)

    def schedules(self) -> list[dict[str, Any]]:
        return schedules.listing(self.board, self.user)

    def schedule(self, name: str, fires: int = 20) -> dict[str, Any]:
        """A schedule with its last ``fires`` fire records (posted, skipped, missed), newest first."""
        return schedules.show(self.board, self.user, name, fires)

    def pause_schedule(self, name: str, paused: bool = True) -> None:
        schedules.set_paused(self.board, self.user, name, paused)

    def remove_schedule(self, name: str) -> None:
        schedules.remove(self.board, self.user, name)

    # ---- resolving ids -------------------------------------------------------------------------

    def locate(self, some_id: str) -> tuple[ids.ParsedId, str, str]:
        """(parsed id, full id, owner) for a job, layer or task id whose job part is a full job
        id, a unique prefix or suffix of one, or the name of the caller's newest job of that name
        (``hello.1.0``: task 0 of layer 1 of it). Raises InvalidSpec, NotFound, Ambiguous."""
        readings = resolve.split_id(some_id)
        if not readings:
            raise InvalidSpec("id", f"{some_id!r} is not a job, layer or task id or a job name")
        first_error: NotFound | InvalidSpec | PermissionDenied | None = None
        for head, rest in readings:  # "v1.2" may be job v1's layer 2 or the job named v1.2
            try:
                job, owner = self.board.resolve_job(head, self.user)
            except PermissionDenied:  # not among ours, and we may not look among the others'
                first_error = first_error or self._not_yours(head, some_id)
                continue
            except (NotFound, InvalidSpec) as exc:
                first_error = first_error or exc
                continue
            full = job + rest
            return ids.parse_id(full), full, owner
        raise first_error or NotFound(f"no job {some_id}")

    def _not_yours(self, head: str, some_id: str) -> NotFound | PermissionDenied:
        """What to say of an id that is not among the caller's jobs, when etcd does not let the
        caller look among other users' (etcd auth on, not an admin)."""
        if len(head) == ids.JOB_ID_LEN:
            return PermissionDenied(f"permission denied: {some_id} is not one of your jobs (user {self.user}); "
                                    "only its owner and admins may see or change another user's job")
        return NotFound(f"no job {head} among your jobs (user {self.user})")

    # ---- reading -------------------------------------------------------------------------------

    def jobs(self, *, user: str | None = None, all_users: bool = False, state: str | None = None,
             name: str | None = None, node: str | None = None, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Jobs newest first with progress counts; ``node`` keeps jobs with a task that ran there."""
        try:
            return views.list_jobs(self.board, user=user or self.user, all_users=all_users, state=state, name=name,
                                   node=node, limit=limit, offset=offset)
        except PermissionDenied as exc:
            what = "every user's jobs (--all-users)" if all_users else f"the jobs of user {user}"
            raise PermissionDenied(f"permission denied: {what} may be listed by admins only, "
                                   f"and you are {self.user} [{exc}]") from None

    def show(self, some_id: str, tasks: int = views.SHOW_TASKS, after: str | None = None) -> dict[str, Any]:
        """A job as a tree of layers and tasks, a layer with its tasks, or a task with its history,
        result and log tail, depending on what the id names.

        A job or layer holds each layer's ``counts`` by state (from key counts) and a page of
        ``tasks`` tasks per layer in number order (default 100, so that what it reads does not grow
        with the job; 0: every task, a read of the whole job; the CLI shows 20). A layer's ``more``
        says how many tasks follow its page and ``next`` is the task id to pass as ``after`` for the
        next page (None on the last). A QUEUED task, a layer and a job carry ``waiting``: why no
        live node can hold it (or some queued task of theirs), or None (see placement.why_waiting).
        Raises NotFound, Ambiguous, InvalidSpec."""
        parsed, full, owner = self.locate(some_id)
        after_id = self.locate(after)[1] if after else None
        if parsed.kind == "job":
            return {"kind": "job", **views.job_tree(self.board, full, owner, tasks, after_id)}
        if parsed.kind == "layer":
            return {"kind": "layer", **views.layer_detail(self.board, full, owner, tasks, after_id)}
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

    def flow_keys(self) -> list[dict[str, Any]]:
        """Concurrency keys with their holders and waiters, rate keys with their recent starts and
        waiters (see :func:`conductor.flowkeys.overview`). Raises StoreUnavailable like any read."""
        from . import flowkeys

        return flowkeys.overview(self.store, self.keys, user=self.user)  # a user under auth: their waiters only

    def nodes(self) -> list[dict[str, Any]]:
        """Live nodes with their facts and running tasks (admins, or without etcd auth)."""
        try:
            return views.list_nodes(self.store, self.keys)
        except PermissionDenied as exc:
            raise PermissionDenied(f"permission denied: nodes are for admins only, and you are {self.user} "
                                   f"[{exc}]") from None

    def alarms(self) -> list[dict[str, str]]:
        """etcd's raised alarms (``NOSPACE``, ``CORRUPT``), each ``{"member": hex id, "alarm": name}``;
        none when etcd's authentication does not let this user list them (it is a root call).
        Raises StoreUnavailable like any read."""
        try:
            found = self.store.alarms()
        except (PermissionDenied, AuthFailed):
            return []
        return [{"member": f"{member:x}", "alarm": name} for member, name in found]

    def members(self) -> list[dict[str, Any]]:
        """etcd's members (``id`` in hex), each with ``healthy``, ``leader``, ``learner`` and raft
        ``lag``, asking each member directly (see :func:`conductor.members.health`)."""
        from .members import health

        return [{**m, "id": f"{m['id']:x}"} for m in health(self.store)]

    def defragment(self) -> list[str]:
        """Defragment every etcd endpoint's database (after a compaction: gives the space back)."""
        return self.store.defragment()

    def disarm(self) -> list[dict[str, str]]:
        """Disarm etcd's NOSPACE alarm (free space first, or etcd raises it again at once)."""
        return [{"member": f"{member:x}", "alarm": name} for member, name in self.store.disarm()]

    def counts(self, job_id: str) -> dict[str, int]:
        return views.job_counts(self.store, self.keys, [self.job(job_id)])[0]

    # ---- steering ------------------------------------------------------------------------------

    def target(self, text: str, etag: int | None = None) -> Target:
        """A Target from ``ID`` or ``ID@ETAG`` (an explicit ``etag`` wins)."""
        some_id, _, tag = text.partition("@")
        parsed, full, owner = self.locate(some_id)
        if tag:
            try:
                etag = etag if etag is not None else int(tag)
            except ValueError:
                raise InvalidSpec("etag", f"{tag!r} is not a number") from None
        return Target(parsed.kind, full, owner, etag)

    def _control(self) -> Control:
        return Control(self.board, by=self.user)

    def pause(self, *ids: str, etag: int | None = None) -> list[Result]:
        """Pause jobs, layers or tasks: nothing they cover is claimed; running tasks go on."""
        return [self._control().pause(self.target(i, etag), True) for i in ids]

    def unpause(self, *ids: str, etag: int | None = None) -> list[Result]:
        return [self._control().pause(self.target(i, etag), False) for i in ids]

    def kill(self, *ids: str, grace: float = 10.0, etag: int | None = None) -> list[Result]:
        """Stop running tasks (SIGTERM, SIGKILL after ``grace``) and mark what they cover ERRORED."""
        return [self._control().stop(self.target(i, etag), "kill", grace) for i in ids]

    def skip(self, *ids: str, grace: float = 10.0, etag: int | None = None) -> list[Result]:
        """Mark tasks SKIPPED (done, for the layers after); running ones are killed first."""
        return [self._control().stop(self.target(i, etag), "skip", grace) for i in ids]

    def retry(self, *ids: str, etag: int | None = None, no_cache: bool = False) -> list[Result]:
        """Run ERRORED tasks again, whatever their attempt count; ``no_cache``: run them even when a
        cached result of their key exists (docs/flow/caching.md)."""
        return [self._control().retry(self.target(i, etag), no_cache=no_cache) for i in ids]

    def add_tasks(self, layer_id: str, tasks: list[dict[str, Any]], etag: int | None = None) -> list[str]:
        """Add tasks to a layer that has not started; returns their ids."""
        return self._control().add_tasks(self.target(layer_id, etag), tasks)

    def env(self, some_id: str) -> dict[str, str]:
        target = self.target(some_id)
        found = self.board.load(self._control().key_of(target))
        if found is None:
            raise NotFound(f"no {target.kind} {target.id}")
        return dict(found[0].get("env") or {})

    def set_env(self, some_id: str, changes: dict[str, str | None], etag: int | None = None) -> Result:
        """Set (None: remove) env variables; applies to tasks that have not started yet."""
        return self._control().set_env(self.target(some_id, etag), changes)

    def set_result(self, task_id: str, data: bytes, etag: int | None = None) -> Result:
        return self._control().set_result(self.target(task_id, etag), data)

    def gc(self, keep: float = retention.DEFAULT_KEEP, dry_run: bool = False, compact: bool = False) -> list[str]:
        """Remove jobs finished more than ``keep`` seconds ago (and compact etcd's history)."""
        removed = retention.collect(self.board, keep, dry_run)
        if compact and not dry_run:
            retention.compact(self.board, force=True)
        return removed

    def logs(self, task_id: str, follow: bool = False, write: Callable[[bytes], None] | None = None,
             timeout: float | None = None, stop: threading.Event | None = None) -> dict[str, Any] | None:
        """Write a task's stored log tail; with ``follow``, keep writing what the running task adds
        (by watching its log key) until it has ended (or ``stop`` is set: within a second).
        Returns the last log entry."""
        parsed, full, owner = self.locate(task_id)
        if parsed.kind != "task":
            raise NotFound(f"{task_id} is not a task id")
        out = write or (lambda data: None)
        follower = logs.LogFollower(self.store, self.keys, owner, full, out)
        return follower.run(follow, timeout, stop)

    # ---- following -----------------------------------------------------------------------------

    def watch(self, some_id: str | None, on_change: Callable[[Any], None], stop: threading.Event,
              rate: float = 4.0, tasks: int = views.PAGE_TASKS, **filters: Any) -> None:
        """Call ``on_change(view)`` with a fresh view (a job list, or what ``show`` gives for an id)
        whenever etcd reports a change to it, at most ``rate`` times a second, until ``stop``.
        Driven by watches: without changes nothing is read."""
        dirty = threading.Event()

        class Poke(FollowHandler):
            def reset(self, kvs: list[KV], revision: int) -> None:
                dirty.set()

            def events(self, events: list[Event], revision: int) -> None:
                dirty.set()

        k = self.keys
        if some_id is None:
            user = filters.get("user") or self.user
            # a user's jobs and counter keys (every claim and finish changes one)
            prefixes = [k.job(user), k.user(user)] if not filters.get("all_users") else [k.user(), k.active(), k.q("paused")]

            def read() -> Any:
                return self.jobs(**filters)
        else:
            _, full, owner = self.locate(some_id)
            job = full.split(".")[0]
            prefixes = [k.job(owner, job), k.layer(owner, job + "."), k.task(owner, full if "." in full else job + "."),
                        k.count(owner, job)]
            if views.live_nodes(self.store, k) is not None:  # nodes: why a queued task waits (admins, no auth)
                prefixes.append(k.node())

            def read() -> Any:
                return self.show(full, tasks=tasks)
        followers = [self.store.follow(p, Poke(), name="show-watch") for p in prefixes]
        try:
            while not stop.is_set():
                if dirty.wait(0.5):
                    dirty.clear()
                    on_change(read())
                    stop.wait(1.0 / rate)
        finally:
            for f in followers:
                f.stop()

    def events(self, deliver: Callable[[list[dict[str, Any]]], None], *, since: int | None = None,
               ids: list[str] | tuple[str, ...] = (), all_users: bool = False,
               stop: threading.Event | None = None, started: Callable[[int], None] | None = None) -> None:
        """Call ``deliver(records)`` with the transition records (see :mod:`conductor.events`) of
        each etcd revision, in order, until ``stop`` is set. From ``since`` (a revision: etcd
        replays its log from there, nothing is listed), else from now on. ``ids`` (job, layer or
        task ids, resolved as ``show`` does) keep those objects; otherwise the caller's jobs and
        every node and fire (everyone's with ``all_users``). ``started(revision)`` is told the first
        revision followed before the watch opens. Raises HistoryCompacted when ``since``
        is older than etcd's history, InvalidSpec, NotFound or Ambiguous for an id."""
        if since is not None and since < 1:
            raise InvalidSpec("since", f"{since} is not a revision (revisions start at 1)")
        wanted = eventlog.Filter(user=None if all_users else self.user, ids=[self._event_id(i) for i in ids])
        # under etcd auth a user may watch only their own prefix (no nodes, no fires); admins ask all_users
        own = self.store.credentials.auth and not all_users
        feed = EventFeed(self.store, self.keys, wanted, deliver, since, started, self.keys.objects(self.user) if own else None)
        if stop is None:
            feed.run()
            return
        done = threading.Event()

        def stopper() -> None:  # the feed blocks in its watch: stopping it cancels the watch
            while not done.is_set():
                if stop.wait(0.2):
                    feed.stop()
                    return

        threading.Thread(target=stopper, name="events-stop", daemon=True).start()
        try:
            feed.run()
        finally:
            done.set()

    def _event_id(self, some_id: str) -> str:
        """A full id for an events filter: as ``show`` resolves it, or as typed when it is a full
        id of a job that is gone (a replay from an old revision may follow a removed job)."""
        try:
            return self.locate(some_id)[1]
        except NotFound:
            parsed = ids.parse_id(some_id)  # raises InvalidSpec naming the id
            if len(parsed.job) != ids.JOB_ID_LEN:
                raise
            return some_id.strip()

    def wait(self, job_id: str, *, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any], dict[str, int]], None] | None = None) -> dict[str, Any]:
        """Follow a job (by watches, not polling) until it is COMPLETED or ERRORED; returns it.

        ``on_progress(job, counts)`` is called on every change; its last call counts every finished
        and running task as of the commit that ended the job. Without it only the job's key is watched
        (one watch instead of three: :mod:`conductor.jobwatch`). Raises WaitTimeout, NotFound."""
        deadline = None if timeout is None else time.monotonic() + timeout  # for both tries
        if len(job_id) == ids.JOB_ID_LEN and resolve.could_be_id(job_id):
            # a full id, as post returned it: the caller's own jobs are where locate looks first,
            # so follow it there at once (the follower's listing says whether it is there) instead
            # of reading the job first: one round trip less while its first task starts
            try:
                return self._follow_job(job_id, self.user, timeout, deadline, on_progress)
            except jobwatch.NeverSeen:
                pass  # not the caller's (another user's job, or none): look it up as any id
        _, full, owner = self.locate(job_id)
        return self._follow_job(full, owner, timeout, deadline, on_progress)

    def _follow_job(self, full: str, owner: str, timeout: float | None, deadline: float | None,
                    on_progress: Callable[[dict[str, Any], dict[str, int]], None] | None) -> dict[str, Any]:
        """:meth:`wait` on a located job. Raises jobwatch.NeverSeen (a NotFound) when the first
        listing has no such job, NotFound when it is removed while waited for, WaitTimeout."""
        prefixes = [self.keys.job(owner, full)]
        if on_progress is not None:  # the counter keys serve the counts only
            prefixes.append(self.keys.count(owner, full))
        watch = jobwatch.JobWatch(len(prefixes))
        handlers = (watch.job_handler, watch.tally_handler)
        followers = [self.store.follow(prefix, handlers[slot](), name=f"wait-{slot}") for slot, prefix in enumerate(prefixes)]
        try:
            return jobwatch.wait_for_end(watch, full, timeout, on_progress,
                                         lambda slot: self.store.scan(prefixes[slot]),
                                         deadline)
        finally:
            for f in followers:
                f.stop()
