"""Stored templates, and the messages that post them: ``send``, chains, joins.

* Templates are a user's own (``templates/<user>/<name>``) or published by an admin for everyone
  (``public/templates/<name>``, read-only to users). A user's own template hides a published one
  of the same name.
* ``send MESSAGE`` posts one job for every template of the sender (own or published) whose
  ``triggers`` list the message, as the sender. Every template is instantiated (and so checked)
  before the first job is written.
* A job or layer may list ``on_success`` / ``on_failure`` messages. The transaction that ends it
  also writes them to ``outbox/<user>/<job>/<n>``; whoever ran that transaction delivers them, and the
  sweeper delivers any left behind. Delivery is idempotent: a job posted for a message gets an id
  derived from the message's id and the template, so delivering twice posts nothing new.
* A template with ``after: [a, b, c]`` is a join: each arriving message is recorded under
  ``joins/<user>/<template>/<key>`` (the key is the parameters the template takes); the job is posted
  once, when all of them have arrived, and never if one parent failed (it sends no success).
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from . import codec, ids, loopguard, model, templates
from .seams import Poster as Board
from .errors import InvalidSpec, NotFound, Refused
from .ops import Delete, Get, Put, absent, mod_is

log = logging.getLogger("conductor.messages")


# ---- stored templates ------------------------------------------------------------------------


def add_template(board: Board, data: dict[str, Any], by: str, replace: bool = False,
                 shared: bool = False) -> dict[str, Any]:
    """Validate and store a template (a job file with inputs) as ``by``'s own, or published for
    every user with ``shared`` (admins only: etcd refuses others with PermissionDenied); refuses a
    name in use unless replace."""
    meta, _ = templates.split(data)
    defaults = {n: s.get("default", "x") for n, s in meta["inputs"].items()}
    templates.instantiate(data, {n: v for n, v in defaults.items() if n in meta["inputs"]})  # checks every field
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise InvalidSpec("name", "a template needs a name (no '/')")
    loopguard.check_add(name, meta, data, list_templates(board, by))
    value = {"name": name, "data": data, "meta": meta, "by": by, "at": model.now(), "shared": shared}
    key = board.keys.shared_template(name) if shared else board.keys.template(by, name)
    compare = [] if replace else [absent(key)]
    ops = [Put(key, codec.pack(value))] + ([Delete(board.keys.loop_stop(by, name))] if replace and not shared else [])
    if not board.store.txn(compare, ops).succeeded:  # storing it again also clears its loop guard stop
        raise Refused(f"a template named {name!r} exists; remove it first or add --replace")
    log.info("template %s %s by %s", name, "published" if shared else "stored", by)
    return value


def get_template(board: Board, name: str, user: str) -> dict[str, Any]:
    """``user``'s template of that name, else the published one. Raises NotFound."""
    res = board.store.read([Get(board.keys.template(user, name)), Get(board.keys.shared_template(name))])
    kvs = res.responses[0].kvs or res.responses[1].kvs
    if not kvs:
        raise NotFound(f"no template {name!r}")
    value = codec.unpack(kvs[0].value)
    value["etag"] = kvs[0].mod_revision
    return value


def list_templates(board: Board, user: str) -> list[dict[str, Any]]:
    """``user``'s own templates and the published ones (an own one hides a published namesake)."""
    own = {v["name"]: v for v in (codec.unpack(kv.value) for kv in board.store.iter_prefix(board.keys.template(user)))}
    shared = [codec.unpack(kv.value) for kv in board.store.iter_prefix(board.keys.shared_template())]
    return sorted([*own.values(), *(s for s in shared if s["name"] not in own)], key=lambda t: t["name"])


def remove_template(board: Board, name: str, user: str, shared: bool = False) -> None:
    """Remove ``user``'s template (or, with ``shared``, the published one: admins only)."""
    schedules = [codec.unpack(kv.value) for kv in board.store.iter_prefix(board.keys.schedule(user))]
    using = sorted(s["name"] for s in schedules if s.get("template") == name)
    if using and not shared:
        raise Refused(f"template {name!r} is used by schedule(s) {', '.join(using)}; remove those first")
    key = board.keys.shared_template(name) if shared else board.keys.template(user, name)
    if board.store.delete(key) == 0:
        raise NotFound(f"no {'published ' if shared else ''}template {name!r}")
    if not shared:
        board.store.txn([], [Delete(board.keys.loop_stop(user, name)), Delete(board.keys.loop_rate(user, name))])


def post_template(board: Board, template: dict[str, Any], params: dict[str, str], user: str,
                  source: dict[str, Any], job_id: str | None = None) -> str:
    """Post a job from a template (instantiated and checked first)."""
    spec, meta, secrets = templates.instantiate(template["data"], params)
    source = {**source, "template": template["name"], "inputs": templates.recorded_inputs(meta, params)}
    return board.post(spec, user, source=source, job_id=job_id, secrets=secrets, meta=meta)


# ---- sending ---------------------------------------------------------------------------------


def derived_id(seed: str, at: float) -> str:
    """A job id that sorts by ``at`` and is the same for the same seed (idempotent posting)."""
    digest = int(hashlib.sha256(seed.encode()).hexdigest(), 16)
    base = ids.new_job_id(at)
    return base[:10] + ids._encode(digest, 6)


def send(board: Board, message: str, params: dict[str, str], user: str, origin: dict[str, Any],
         message_id: str | None = None, strict: bool = True) -> list[str]:
    """Post a job for every template triggered by ``message`` and record it for joins.

    With ``strict`` (a user's send) a parameter no matching template takes is refused, and every
    template is checked before anything is written."""
    message_id = message_id or ids.new_job_id()
    depth = loopguard.depth_of(origin)  # the chain's depth: 0 for a user's send
    at = ids.job_id_time(message_id)  # ids of messages are job-style ids: they carry their time
    every = list_templates(board, user)
    triggered = [t for t in every if message in t["meta"]["triggers"]]
    joining = [t for t in every if message in t["meta"]["after"]]
    if strict:
        declared = {n for t in triggered + joining for n in t["meta"]["inputs"]}
        for name in params:
            if name not in declared:
                raise InvalidSpec(f"-p {name}", f"is not an input of any template triggered by {message!r}")
        for t in triggered:  # check all before writing any
            templates.instantiate(t["data"], _only(params, t), f"template {t['name']}: ")
            loopguard.refuse_stopped(board, user, t)
    posted = []
    source = {"kind": "message", "message": message, "message_id": message_id, **origin, "depth": depth}
    for t in triggered:
        if loopguard.admit(board, user, t, depth, origin, message):
            continue  # stopped by a loop guard: recorded and said (loopguard.stop)
        job_id = derived_id(f"{message_id}/{t['name']}", at)
        try:
            posted.append(post_template(board, t, _only(params, t), user, source, job_id))
        except InvalidSpec as exc:
            log.error("message %s: template %s not posted: %s", message, t["name"], exc)
    for t in joining:
        job = _join(board, t, message, params, user, origin, at)
        if job:
            posted.append(job)
    return posted


def _only(params: dict[str, str], template: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k in template["meta"]["inputs"]}


def _join(board: Board, template: dict[str, Any], message: str, params: dict[str, str], user: str,
          origin: dict[str, Any], at: float) -> str | None:
    mine = _only(params, template)
    key_text = "&".join(f"{k}={v}" for k, v in sorted(mine.items()))
    key = board.keys.join(user, template["name"], hashlib.sha256(key_text.encode()).hexdigest()[:20])
    needed = set(template["meta"]["after"])
    for _ in range(30):
        kv = board.store.get(key)
        state: dict[str, Any] = codec.unpack(kv.value) if kv else {"received": {}, "params": mine, "at": at}
        state["received"][message] = origin.get("job") or "sent"
        compare = [mod_is(key, kv.mod_revision)] if kv else [absent(key)]
        if not needed <= set(state["received"]):
            if board.store.txn(compare, [Put(key, codec.pack(state))]).succeeded:
                log.info("join %s: %s arrived (%d of %d)", template["name"], message, len(state["received"]),
                         len(needed))
                return None
            continue
        # Complete: post first (its id is fixed by the round, so a retry posts nothing new), then
        # end the round; a later message starts the next one.
        job_id = derived_id(f"join/{template['name']}/{key_text}/{state['at']}", state["at"])
        depth = loopguard.depth_of(origin)
        source = {"kind": "join", "after": sorted(needed), "parents": state["received"], "depth": depth}
        if loopguard.admit(board, user, template, depth, origin, message):
            board.store.txn(compare, [Delete(key)])  # the round ends unposted: the stop is recorded
            return None
        posted = post_template(board, template, mine, user, source, job_id)
        board.store.txn(compare, [Delete(key)])
        return posted
    return None


# ---- the outbox: messages sent when jobs and layers end ---------------------------------------


def outbox_ops(board: Board, job: dict[str, Any], messages: list[str], outcome: str, what: str) -> list[Any]:
    """Ops that record messages to send, written in the transaction that ends ``what``."""
    ops = []
    for n, message in enumerate(messages):
        entry = {"message": message, "job": job["id"], "user": job["user"], "what": what, "outcome": outcome,
                 "params": {k: v for k, v in ((job.get("source") or {}).get("inputs") or {}).items()
                            if v != templates.MASK},
                 "id": derived_id(f"{job['id']}/{what}/{outcome}/{n}/{message}", time.time()),
                 "depth": loopguard.depth_of(job.get("source")) + 1}
        ops.append(Put(board.keys.outbox(job["user"], f"{job['id']}/{what}-{n}-{outcome}"), codec.pack(entry)))
    return ops


def deliver_all(board: Board) -> int:
    """Send every user's waiting messages (the sweeper: nodes only); returns how many."""
    return _deliver(board, board.keys.outbox())


def deliver(board: Board, user: str, prefix: str = "") -> int:
    """Send ``user``'s messages waiting in the outbox (under ``prefix``); returns how many."""
    return _deliver(board, board.keys.outbox(user, prefix))


def _deliver(board: Board, prefix: str) -> int:
    """Each message is sent as the user whose outbox holds it (the key's path, never the value)."""
    count = 0
    for kv in board.store.iter_prefix(prefix):
        entry = codec.unpack(kv.value)
        user = board.keys.strip(kv.key).split("/")[1]
        try:
            send(board, entry["message"], entry.get("params", {}), user,
                 {"job": entry["job"], "parent_outcome": entry["outcome"], "depth": entry.get("depth", 1)},
                 entry["id"], strict=False)
        except Exception:  # noqa: BLE001 - one bad message must not block the others
            log.exception("delivering message %s from job %s failed", entry.get("message"), entry.get("job"))
            continue
        board.store.txn([mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
        log.info("message %s sent (job %s %s)", entry["message"], entry["job"], entry["outcome"])
        count += 1
    return count
