"""Schedules: cron rules that post a template, fired exactly once per tick across the cluster.

Every conductor runs the same loop; for each due tick it tries to create ``fires/<schedule>/<tick>``
and only the node whose transaction creates it fires that tick (invariant 9). Clock skew between
nodes within a tick's length therefore changes who fires, never how often. The fire key names the
job it posts (an id derived from schedule and tick), so a firer that dies between creating the key
and posting is finished by the sweeper with the same id: posted once, whatever happens.

Overlap policy, when the previous run of the schedule is still active: ``allow`` posts anyway,
``forbid`` skips the tick, ``replace`` kills the previous run first. Catch-up: ticks missed while
no conductor ran are fired once each, the most recent ``catch_up`` of them; older ones are skipped.
Cron expressions have 5 fields, or 6 with seconds last (croniter's convention), read on the wall
clock of the schedule's zone (``tz``, UTC by default; DST is handled in :mod:`conductor.ticks`).

Every tick leaves a record under ``fires/<schedule>/<tick>``: posted, skipped (by the overlap
policy, or because the template no longer fits) or, for ticks passed over beyond ``catch_up``,
one ``missed`` record for the run of them, keyed by the last (``from`` and ``count`` say the rest).
"""
from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from . import codec, messages, model, states, templates, ticks
from .board import Board
from .errors import InvalidSpec, NotFound, Refused
from .ops import Put, absent, mod_is

log = logging.getLogger("conductor.schedules")

OVERLAP = ("allow", "forbid", "replace")
MAX_TICKS = 10_000  # looked at in one pass, so a tiny interval after a long outage stays bounded
GRACE = 3.0  # a tick older than this when first seen was missed (nodes look at least every second)


def validate_cron(expr: str) -> str:
    """A cron rule, normalised; raises InvalidSpec naming ``--cron`` when it is not one, or when
    no date ever matches it (``0 0 30 2 *``: 30 February)."""
    from croniter import CroniterError, croniter  # here: every client imports this module, few use cron

    fields = expr.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(expr):
        raise InvalidSpec("--cron", f"{expr!r} is not a cron expression (5 fields, or 6 with seconds last)")
    try:
        croniter(expr, time.time()).get_next(float)
    except (CroniterError, ValueError, OverflowError):
        raise InvalidSpec("--cron", f"{expr!r} never fires: no date matches it") from None
    return " ".join(fields)


def add(board: Board, name: str, cron: str, template: str, params: dict[str, str], by: str,
        overlap: str = "allow", catch_up: int = 0, replace: bool = False, tz: str = ticks.UTC) -> dict[str, Any]:
    """Store a schedule after checking the name, policy, cron rule, zone, template and parameters
    (InvalidSpec naming the option, NotFound for the template; nothing written then). One
    transaction, refused (Refused) if the name is in use and ``replace`` is not given."""
    if not name or "/" in name:
        raise InvalidSpec("name", "a schedule needs a name (no '/')")
    if overlap not in OVERLAP:
        raise InvalidSpec("--overlap", f"must be one of {', '.join(OVERLAP)}, not {overlap!r}")
    if catch_up < 0:
        raise InvalidSpec("--catch-up", "must not be negative")
    cron = validate_cron(cron)
    tz = ticks.validate_tz(tz)
    stored = messages.get_template(board, template, by)
    templates.instantiate(stored["data"], params, f"template {template}: ")
    value = {"name": name, "cron": cron, "template": template, "params": params, "overlap": overlap,
             "catch_up": catch_up, "tz": tz, "paused": False, "by": by, "created": model.now()}
    key = board.keys.schedule(by, name)
    if not board.store.txn([] if replace else [absent(key)], [Put(key, codec.pack(value))]).succeeded:
        raise Refused(f"a schedule named {name!r} exists; remove it first or add --replace")
    log.info("schedule %s added: %s (%s) -> template %s", name, cron, tz, template)
    return value


def owned(board: Board, kv: Any) -> dict[str, Any]:
    """A stored schedule with ``user`` set from its key's path (``schedules/<user>/<name>``): the
    owner every job it posts belongs to, whatever the value says."""
    value = codec.unpack(kv.value)
    value["user"] = board.keys.strip(kv.key).split("/")[1]
    return value


def get(board: Board, user: str, name: str) -> tuple[dict[str, Any], Any]:
    kv = board.store.get(board.keys.schedule(user, name))
    if kv is None:
        raise NotFound(f"no schedule {name!r}")
    return owned(board, kv), kv


def set_paused(board: Board, user: str, name: str, paused: bool) -> None:
    for _ in range(20):
        value, kv = get(board, user, name)
        value.pop("user", None)
        value["paused"] = paused
        if board.store.txn([mod_is(kv.key, kv.mod_revision)], [Put(kv.key, codec.pack(value))]).succeeded:
            return


def remove(board: Board, user: str, name: str) -> None:
    """Remove a schedule and its fire keys (a schedule added again under the name starts afresh)."""
    if board.store.delete(board.keys.schedule(user, name)) == 0:
        raise NotFound(f"no schedule {name!r}")
    board.store.delete_prefix(board.keys.fire(user, name))


def zone_of(schedule: dict[str, Any]) -> str:
    """The schedule's time zone (schedules stored before zones existed were evaluated in UTC)."""
    return str(schedule.get("tz") or ticks.UTC)


def next_ticks(schedule: dict[str, Any], after: float, until: float, limit: int = MAX_TICKS) -> list[float]:
    """The schedule's tick instants in (after, until], the earliest ``limit`` of them."""
    return ticks.ticks(schedule["cron"], zone_of(schedule), after, until, limit)


def next_fire(schedule: dict[str, Any], now: float) -> float:
    """The next tick after ``now``; raises croniter's ValueError for a rule that never fires
    (stored before add refused such rules), which :func:`listing` shows as ``never``."""
    return ticks.next_tick(schedule["cron"], zone_of(schedule), now)


def next_fire_or_none(schedule: dict[str, Any], now: float | None = None) -> float | None:
    from croniter import CroniterError

    try:
        return next_fire(schedule, time.time() if now is None else now)
    except (CroniterError, ValueError, OverflowError, KeyError, TypeError, InvalidSpec):
        return None


def last_fired(board: Board, user: str, name: str) -> float | None:
    prefix = board.keys.fire(user, name)
    res = board.store.range(prefix, _end(prefix), limit=1, keys_only=True, descending=True)
    return float(res.kvs[0].key.rsplit("/", 1)[1]) if res.kvs else None


def _end(prefix: str) -> str:
    from .keys import prefix_end

    return prefix_end(prefix)


class Due(NamedTuple):
    """What to do with a schedule now: ticks passed over for good, and ticks to fire, oldest first."""

    missed: list[float]
    fire: list[float]


def due(board: Board, schedule: dict[str, Any], now: float) -> Due:
    """Ticks this schedule should fire now: the current one (at most GRACE seconds old) and up to
    ``catch_up`` missed ones (older: nobody fired them in time, while no conductor ran or while it
    was paused); the missed ones beyond those are passed over (see :func:`record_missed`). Never a
    tick from before the schedule was created."""
    last = last_fired(board, schedule["user"], schedule["name"])
    start = max(last or 0.0, schedule["created"])
    found = next_ticks(schedule, start, now)
    current = [t for t in found if now - t <= GRACE]
    missed = [t for t in found if now - t > GRACE]
    keep = int(schedule.get("catch_up", 0))
    cut = max(0, len(missed) - keep)
    return Due(missed[:cut], missed[cut:] + current)


def record_missed(board: Board, schedule: dict[str, Any], missed: list[float], node: str) -> bool:
    """Record a run of ticks passed over as one ``missed`` fire record, keyed by its last tick (one
    key whatever the run's length, so it always fits a transaction). Created only if absent, in one
    transaction, like a fire: returns False if another node recorded it first."""
    if not missed:
        return False
    key = board.keys.fire(schedule["user"], schedule["name"], missed[-1])
    record = {"state": "missed", "tick": missed[-1], "from": missed[0], "count": len(missed), "node": node,
              "at": time.time()}
    if not board.store.txn([absent(key)], [Put(key, codec.pack(record))]).succeeded:
        return False
    log.info("schedule %s: %d tick(s) missed, %s to %s, beyond catch-up %s", schedule["name"], len(missed),
             ticks.local(missed[0], zone_of(schedule)), ticks.local(missed[-1], zone_of(schedule)),
             schedule.get("catch_up", 0))
    return True


def fire(board: Board, schedule: dict[str, Any], tick: float, node: str) -> str | None:
    """Fire one tick if this node is first to; returns what it did, or None if another node has."""
    name = schedule["name"]
    key = board.keys.fire(schedule["user"], name, tick)
    job_id = messages.derived_id(f"schedule/{name}/{int(tick)}", tick)
    claim = {"state": "firing", "job": job_id, "node": node, "at": time.time(), "tick": tick}
    if not board.store.txn([absent(key)], [Put(key, codec.pack(claim))]).succeeded:
        return None
    return complete(board, schedule, tick, claim)


def complete(board: Board, schedule: dict[str, Any], tick: float, claim: dict[str, Any]) -> str:
    """Post (or skip) the job of a tick this node won; idempotent, so the sweeper can redo it."""
    name, user = schedule["name"], schedule["user"]
    key = board.keys.fire(user, name, tick)
    outcome = "posted"
    previous = _previous_run(board, user, name, tick)
    if previous and schedule.get("overlap") == "forbid":
        outcome = f"skipped: run {previous[1]} of the previous tick is still {previous[2]}"
    else:
        if previous and schedule.get("overlap") == "replace":
            from .control import Control, Target

            Control(board, by=f"schedule {name}").stop(Target("job", previous[1], previous[0]), "kill", grace=5.0)
            outcome = f"posted, replacing run {previous[1]}"
        try:
            stored = messages.get_template(board, schedule["template"], user)
            source = {"kind": "schedule", "schedule": name, "tick": tick, "cron": schedule["cron"],
                      "tz": zone_of(schedule)}
            messages.post_template(board, stored, schedule.get("params", {}), user, source, claim["job"])
        except (NotFound, InvalidSpec) as exc:  # the template went away or no longer takes the params
            outcome = f"skipped: {exc}"
    board.store.put(key, codec.pack({**claim, "state": outcome, "done": time.time()}))
    log.info("schedule %s tick %s: %s (job %s)", name, ticks.local(tick, zone_of(schedule)), outcome, claim["job"])
    return outcome


def _previous_run(board: Board, user: str, name: str, tick: float) -> tuple[str, str, str] | None:
    """(user, job, state) of the schedule's most recent run before ``tick``, if still active (a
    schedule's jobs are its owner's)."""
    prefix = board.keys.fire(user, name)
    res = board.store.range(prefix, board.keys.fire(user, name, tick), limit=5, descending=True)
    for kv in res.kvs:
        fired = codec.unpack(kv.value)
        if not str(fired.get("state", "")).startswith("posted") and fired.get("state") != "firing":
            continue
        found = board.load(board.keys.job(user, fired["job"]))
        if found and found[0]["state"] in (states.PENDING, states.RUNNING):
            return user, fired["job"], found[0]["state"]
        return None
    return None


def unfinished(board: Board, older_than: float = 5.0) -> list[tuple[dict[str, Any], float, dict[str, Any]]]:
    """Fires left ``firing`` by a node that died before posting (for the sweeper)."""
    out = []
    now = time.time()
    for kv in board.store.iter_prefix(board.keys.namespace + "fires/"):
        fired = codec.unpack(kv.value)
        if fired.get("state") == "firing" and now - fired.get("at", now) > older_than:
            user, name = board.keys.strip(kv.key).split("/")[1:3]
            try:
                schedule, _ = get(board, user, name)
            except NotFound:
                continue
            out.append((schedule, fired["tick"], fired))
    return out


def listing(board: Board, user: str, now: float | None = None) -> list[dict[str, Any]]:
    """Every schedule of ``user`` as stored, with its zone, ``etag``, ``next`` and ``last`` tick."""
    return [_described(board, kv, now) for kv in board.store.iter_prefix(board.keys.schedule(user))]


def _described(board: Board, kv: Any, now: float | None) -> dict[str, Any]:
    value = owned(board, kv)
    value["tz"] = zone_of(value)
    value["etag"] = kv.mod_revision
    value["next"] = None if value.get("paused") else next_fire_or_none(value, now)
    value["never"] = not value.get("paused") and value["next"] is None
    value["last"] = last_fired(board, value["user"], value["name"])
    return value


def fires(board: Board, user: str, name: str, limit: int = 20) -> list[dict[str, Any]]:
    """The schedule's last ``limit`` fire records, newest first: each has ``tick`` and ``state``
    (``firing``, ``posted...``, ``skipped: ...`` or ``missed``, the last with ``from`` and ``count``)."""
    prefix = board.keys.fire(user, name)
    res = board.store.range(prefix, _end(prefix), limit=max(0, limit), descending=True)
    out = []
    for kv in res.kvs:
        record = codec.unpack(kv.value)
        record.setdefault("tick", float(kv.key.rsplit("/", 1)[1]))
        out.append(record)
    return out


def show(board: Board, user: str, name: str, limit: int = 20, now: float | None = None) -> dict[str, Any]:
    """A schedule as :func:`listing` gives it, with its last ``limit`` fire records under ``fires``;
    raises NotFound."""
    _, kv = get(board, user, name)
    value = _described(board, kv, now)
    value["fires"] = fires(board, user, name, limit)
    return value
