"""Stored templates, and the messages that post them: ``send``, chains, joins.

* ``send MESSAGE`` posts one job for every template whose ``triggers`` list the message. Every
  template is instantiated (and so checked) before the first job is written.
* A job or layer may list ``on_success`` / ``on_failure`` messages. The transaction that ends it
  also writes them to ``outbox/<job>/<n>``; whoever ran that transaction delivers them, and the
  sweeper delivers any left behind. Delivery is idempotent: a job posted for a message gets an id
  derived from the message's id and the template, so delivering twice posts nothing new.
* A template with ``after: [a, b, c]`` is a join: each arriving message is recorded under
  ``joins/<template>/<key>`` (the key is the parameters the template takes); the job is posted
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
from .ops import Delete, Put, absent, mod_is

log = logging.getLogger("conductor.messages")


# ---- stored templates ------------------------------------------------------------------------


def add_template(board: Board, data: dict[str, Any], by: str, replace: bool = False) -> dict[str, Any]:
    """Validate and store a template (a job file with inputs); refuses a name in use unless replace."""
    meta, _ = templates.split(data)
    defaults = {n: s.get("default", "x") for n, s in meta["inputs"].items()}
    templates.instantiate(data, {n: v for n, v in defaults.items() if n in meta["inputs"]})  # checks every field
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise InvalidSpec("name", "a template needs a name (no '/')")
    loopguard.check_add(name, meta, data, list_templates(board))
    value = {"name": name, "data": data, "meta": meta, "by": by, "at": model.now()}
    key = board.keys.template(name)
    compare = [] if replace else [absent(key)]
    ops = [Put(key, codec.pack(value))] + ([Delete(board.keys.loop_stop(name))] if replace else [])
    if not board.store.txn(compare, ops).succeeded:  # storing it again also clears its loop guard stop
        raise Refused(f"a template named {name!r} exists; remove it first or add --replace")
    log.info("template %s stored by %s", name, by)
    return value


def get_template(board: Board, name: str) -> dict[str, Any]:
    kv = board.store.get(board.keys.template(name))
    if kv is None:
        raise NotFound(f"no template {name!r}")
    value = codec.unpack(kv.value)
    value["etag"] = kv.mod_revision
    return value


def list_templates(board: Board) -> list[dict[str, Any]]:
    return [codec.unpack(kv.value) for kv in board.store.iter_prefix(board.keys.template())]


def remove_template(board: Board, name: str) -> None:
    users = [codec.unpack(kv.value) for kv in board.store.iter_prefix(board.keys.schedule())]
    using = sorted(s["name"] for s in users if s.get("template") == name)
    if using:
        raise Refused(f"template {name!r} is used by schedule(s) {', '.join(using)}; remove those first")
    if board.store.delete(board.keys.template(name)) == 0:
        raise NotFound(f"no template {name!r}")
    board.store.txn([], [Delete(board.keys.loop_stop(name)), Delete(board.keys.loop_rate(name))])


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
    every = list_templates(board)
    triggered = [t for t in every if message in t["meta"]["triggers"]]
    joining = [t for t in every if message in t["meta"]["after"]]
    if strict:
        declared = {n for t in triggered + joining for n in t["meta"]["inputs"]}
        for name in params:
            if name not in declared:
                raise InvalidSpec(f"-p {name}", f"is not an input of any template triggered by {message!r}")
        for t in triggered:  # check all before writing any
            templates.instantiate(t["data"], _only(params, t), f"template {t['name']}: ")
            loopguard.refuse_stopped(board, t)
    posted = []
    source = {"kind": "message", "message": message, "message_id": message_id, **origin, "depth": depth}
    for t in triggered:
        if loopguard.admit(board, t, depth, origin, message):
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
    key = board.keys.join(template["name"], hashlib.sha256(key_text.encode()).hexdigest()[:20])
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
        if loopguard.admit(board, template, depth, origin, message):
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
        ops.append(Put(board.keys.outbox(f"{job['id']}/{what}-{n}-{outcome}"), codec.pack(entry)))
    return ops


def deliver(board: Board, prefix: str = "") -> int:
    """Send every message waiting in the outbox (under ``prefix``); returns how many."""
    count = 0
    for kv in board.store.iter_prefix(board.keys.outbox(prefix)):
        entry = codec.unpack(kv.value)
        try:
            send(board, entry["message"], entry.get("params", {}), entry["user"],
                 {"job": entry["job"], "parent_outcome": entry["outcome"], "depth": entry.get("depth", 1)},
                 entry["id"], strict=False)
        except Exception:  # noqa: BLE001 - one bad message must not block the others
            log.exception("delivering message %s from job %s failed", entry.get("message"), entry.get("job"))
            continue
        board.store.txn([mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
        log.info("message %s sent (job %s %s)", entry["message"], entry["job"], entry["outcome"])
        count += 1
    return count
