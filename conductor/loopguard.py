"""Loop guards: message chains that would run away are stopped, loudly (docs/flow/loop-guards.md).

* **Depth.** A job posted by a user (or a schedule, or a user's ``send``) is at depth 0; a job
  posted by a message from a job at depth d is at depth d + 1 (``source.depth``; the outbox entry
  carries it). A message that would post a template's job deeper than its ``max_chain`` (default
  50) posts nothing: the chain stops there.
* **Rate.** Each template counts the jobs messages post from it per minute (one counter key,
  ``loops/rate/<template>``, changed with a compare, so nodes never both count the same slot). The
  post that would go over ``max_rate`` (default 600) stops the template: messages post nothing from
  it until a user runs ``conductor template resume NAME`` (or stores it again).
* **Self-triggering templates** (its on_success / on_failure messages trigger itself, directly or
  through a cycle of templates) are refused at ``template add`` unless they say ``loops: true``.

Every stop writes a record, ``loops/stop/<template>`` (what, why, which job and message, when), and
logs a warning; every node's sweep logs a warning for each record it has not seen yet, so the stop
shows on every node. Nothing is stopped silently.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from . import codec, spec
from .errors import InvalidSpec, NotFound, Refused
from .ops import Put, absent, mod_is
from .seams import Poster as Board

log = logging.getLogger("conductor.loops")

DEFAULT_MAX_CHAIN = 50
DEFAULT_MAX_RATE = 600  # jobs per minute posted by messages from one template
WINDOW = 60.0
MAX_TRIES = 30


# ---- the template's settings and the add-time check -------------------------------------------


def parse_meta(data: dict[str, Any]) -> dict[str, Any]:
    """``loops``, ``max_chain``, ``max_rate`` of a template file, checked (raises InvalidSpec)."""
    return {"loops": spec._bool(data.get("loops", False), "loops"),
            "max_chain": spec._int(data.get("max_chain", DEFAULT_MAX_CHAIN), "max_chain", minimum=0, maximum=10_000),
            "max_rate": spec._int(data.get("max_rate", DEFAULT_MAX_RATE), "max_rate", minimum=1, maximum=1_000_000)}


def sends(meta: dict[str, Any], data: dict[str, Any]) -> dict[str, str]:
    """{message: the field that sends it} for every on_success / on_failure of a template."""
    out: dict[str, str] = {}
    for key in ("on_success", "on_failure"):
        for message in meta.get(key) or []:
            out.setdefault(message, key)
    for i, layer in enumerate(data.get("layers") or []):
        if isinstance(layer, dict):
            for key in ("on_success", "on_failure"):
                messages = layer.get(key) or []
                for message in [messages] if isinstance(messages, str) else messages:
                    out.setdefault(str(message), f"layers[{i}].{key}")
    return out


def _listens(meta: dict[str, Any]) -> set[str]:
    return set(meta.get("triggers") or []) | set(meta.get("after") or [])


def find_cycle(name: str, meta: dict[str, Any], data: dict[str, Any],
               others: list[dict[str, Any]]) -> tuple[str, list[str]] | None:
    """(the field whose message starts it, [name, ..., name]) when template ``name`` triggers
    itself through stored templates ``others``, or None. Pure."""
    graph = {t["name"]: (t["meta"], t["data"]) for t in others if t["name"] != name}
    graph[name] = (meta, data)

    def targets(template: str) -> list[tuple[str, str]]:
        sent = sends(*graph[template])
        return [(field, other) for message, field in sent.items()
                for other, (m, _) in graph.items() if message in _listens(m)]

    stack = [(field, other, [name, other]) for field, other in targets(name)]
    seen: set[str] = set()
    while stack:
        field, at, path = stack.pop()
        if at == name:
            return field, path
        if at in seen:
            continue
        seen.add(at)
        stack += [(field, nxt, [*path, nxt]) for _, nxt in targets(at)]
    return None


def check_add(name: str, meta: dict[str, Any], data: dict[str, Any], others: list[dict[str, Any]]) -> None:
    """Refuse a self-triggering template that does not say ``loops: true`` (InvalidSpec naming
    the field whose message closes the loop)."""
    if meta.get("loops"):
        return
    found = find_cycle(name, meta, data, others)
    if found:
        field, path = found
        raise InvalidSpec(field, f"template {name!r} triggers itself ({' -> '.join(path)}); a loop runs "
                                 f"until its guards stop it. Add 'loops: true' if it loops on purpose")


# ---- at posting time --------------------------------------------------------------------------


def depth_of(source: dict[str, Any] | None) -> int:
    return int((source or {}).get("depth") or 0)


def admit(board: Board, user: str, template: dict[str, Any], depth: int, origin: dict[str, Any],
          message: str) -> str | None:
    """May a message post a job of ``template`` at ``depth``? None if so (and the post is counted
    against max_rate); else why not, after writing the stop record and logging a warning."""
    meta, name = template["meta"], template["name"]
    stopped = board.store.get(stop_key_of(board, user, name))
    if stopped is not None and codec.unpack(stopped.value).get("stopped"):
        why = f"template {name} is stopped by its loop guard; `conductor template resume {name}` restarts it"
        log.warning("message %s: %s", message, why)
        return why
    most = int(meta.get("max_chain", DEFAULT_MAX_CHAIN))
    if depth > most:
        return stop(board, user, name, "depth", f"message chain depth {depth} is over max_chain {most}", origin,
                    message, depth, stops=False)
    rate = int(meta.get("max_rate", DEFAULT_MAX_RATE))
    if not _count(board, user, name, rate):
        return stop(board, user, name, "rate", f"more than max_rate {rate} jobs a minute posted by messages",
                    origin, message, depth, stops=True)
    return None


def refuse_stopped(board: Board, user: str, template: dict[str, Any]) -> None:
    """For a user's send, checked before anything is posted: raise Refused when ``template`` is
    stopped by its rate guard (a message's delivery only logs it, see :func:`admit`)."""
    kv = board.store.get(stop_key_of(board, user, template["name"]))
    if kv is not None and codec.unpack(kv.value).get("stopped"):
        name = template["name"]
        raise Refused(f"template {name} is stopped by its loop guard ({codec.unpack(kv.value).get('reason')}); "
                      f"`conductor template resume {name}` restarts it")


def stop_key_of(board: Board, user: str, name: str) -> str:
    """A user's guard record of a template (their own or a published one they post)."""
    return board.keys.loop_stop(user, name)


def _count(board: Board, user: str, name: str, rate: int, now: float | None = None) -> bool:
    """Count one post in this minute's window; False when it would be more than ``rate``."""
    key = board.keys.loop_rate(user, name)
    for _ in range(MAX_TRIES):
        at = time.time() if now is None else now
        window = at - at % WINDOW
        kv = board.store.get(key)
        value = codec.unpack(kv.value) if kv else {}
        count = value.get("count", 0) if value.get("window") == window else 0
        if count >= rate:
            return False
        new = Put(key, codec.pack({"window": window, "count": count + 1}))
        if board.store.txn([mod_is(key, kv.mod_revision) if kv else absent(key)], [new]).succeeded:
            return True
    return True  # heavy contention: let it through rather than stop a template by accident


def stop(board: Board, user: str, name: str, kind: str, why: str, origin: dict[str, Any], message: str, depth: int,
         stops: bool) -> str:
    """Write the record of a guard's stop (``stops``: the template stays stopped) and warn."""
    record = {"template": name, "user": user, "kind": kind, "reason": why, "message": message, "job": origin.get("job"),
              "depth": depth, "stopped": stops, "at": time.time()}
    board.store.put(stop_key_of(board, user, name), codec.pack(record))
    log.warning("loop guard: template %s %s: %s (message %s from job %s)", name,
                "stopped" if stops else "not posted", why, message, origin.get("job") or "-")
    return why


def records(board: Board, user: str | None = None) -> list[dict[str, Any]]:
    """``user``'s loop guard records (every user's without one: nodes and admins), with etags."""
    out = []
    for kv in board.store.iter_prefix(board.keys.loop_stop(user or "")):
        owner, kind = board.keys.strip(kv.key).split("/")[1:3]
        if kind == "stop":
            out.append({**codec.unpack(kv.value), "user": owner, "etag": kv.mod_revision})
    return out


def resume(board: Board, user: str, name: str) -> None:
    """Clear a template's guard record (and so its stop). Raises NotFound when there is none."""
    if board.store.delete(stop_key_of(board, user, name)) == 0:
        raise NotFound(f"template {name!r} has no loop guard record")
    log.info("template %s resumed", name)


class Warner:
    """A node's once-per-record warning of every loop guard stop (called from each sweep)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def warn(self, board: Board, node: str) -> None:
        seen: dict[str, int] = {}
        for record in records(board):
            name, etag = f"{record['user']}/{record['template']}", record["etag"]
            seen[name] = etag
            if self._seen.get(name) != etag:
                log.warning("loop guard (seen by %s): template %s %s at depth %s: %s", node, name,
                            "stopped" if record.get("stopped") else "chain stopped", record.get("depth"),
                            record.get("reason"))
        self._seen = seen
