"""A layer's tasks as posted: chunk keys of task specs, and task values rebuilt from them.

Post writes a layer's tasks as chunk keys (``q/u/<user>/chunks/<layer>/<first>``), each holding
the specs of up to CHUNK_TASKS consecutive tasks (fewer when they are big), not a key per task.
A task key (``q/u/<user>/tasks/<task>``) is created by the task's first write after post: its
claim, or a user's change (pause, kill, skip, env set) before it ran. Until then the task is what
its chunk says, in the state its layer gives it (PENDING, or QUEUED once the layer runs).

What a chunk holds of a task is what differs from a fresh task of its layer (:func:`spec_of`);
:func:`task_of` rebuilds the value, as post would have stored it. Pure: no etcd, no clock.
"""
from __future__ import annotations

from typing import Any, Iterable

from . import codec, ids, model, states
from .model import Value
from .spec import DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_DISRUPTIONS

CHUNK_TASKS = 1000  # tasks a chunk holds at most
CHUNK_BYTES = 200 * 1024  # a chunk's packed specs at most this big (several chunks go in one request)
STARTED = "its layer started"  # the reason of a task's QUEUED record

# Fields of a task left out of what post stores while they hold these values: every reader takes
# them with .get and this default (views.with_etag puts them back for show and the API).
UNSTORED_DEFAULTS: dict[str, Any] = {"shell": False, "env": {}, "cwd": None, "timeout": None, "priority": 0,
                                     "needs": {}, "paused_at": 0, "usage": None}
_DERIVED = ("kind", "id", "job", "layer", "user")  # from the layer and the task's number
_FRESH: dict[str, Any] = {"state": states.PENDING, "attempts": 0, "failures": 0, "disruptions": 0, "node": None,
                          "exit_code": None, "reason": None, "started": None, "ended": None,
                          "max_attempts": DEFAULT_MAX_ATTEMPTS, "max_disruptions": DEFAULT_MAX_DISRUPTIONS}


def compact(task: Value) -> Value:
    """``task`` without the fields that hold their UNSTORED_DEFAULTS."""
    return {name: value for name, value in task.items()
            if name not in UNSTORED_DEFAULTS or value != UNSTORED_DEFAULTS[name]}


def spec_of(task: Value, number: int) -> Value:
    """What a chunk keeps of a fresh task (number ``number`` of its layer): every field that is
    neither derived from the layer nor at its fresh or default value."""
    out = {}
    for name, value in task.items():
        if name in _DERIVED or name == "records" and not value:
            continue
        if name in _FRESH and value == _FRESH[name] or name in UNSTORED_DEFAULTS and value == UNSTORED_DEFAULTS[name]:
            continue
        if name == "name" and value == f"task-{number}":
            continue
        out[name] = value
    return out


def task_of(layer: Value, number: int, spec: Value, state: str = states.PENDING) -> Value:
    """The value of task ``number`` of ``layer`` as its chunk gives it (compact, like post stores
    values), PENDING, or QUEUED with the record of its layer's start. A new map each call."""
    task: Value = {"kind": "task", "id": ids.task_id(layer["job"], layer["index"], number), "job": layer["job"],
                   "layer": layer["id"], "user": layer["user"], "name": f"task-{number}", **_FRESH, "records": []}
    task.update(spec)
    if task.get("records"):
        task["records"] = list(task["records"])
    if state == states.QUEUED:
        model.move(task, states.QUEUED, STARTED, None, layer.get("started") or 0.0)
    return task


def number_of(task_id: str) -> int:
    return int(task_id.rsplit(".", 1)[1])


def cut(specs: list[Value], first: int = 0) -> list[tuple[int, list[Value]]]:
    """``specs`` (numbered from ``first``) cut into chunks: (first number, specs), each at most
    CHUNK_TASKS specs and CHUNK_BYTES packed (one spec alone may be bigger: it is a chunk alone)."""
    out: list[tuple[int, list[Value]]] = []
    size = 0
    for n, spec in enumerate(specs, first):
        one = len(codec.pack(spec)) + 1
        if not out or len(out[-1][1]) >= CHUNK_TASKS or size + one > CHUNK_BYTES and out[-1][1]:
            out.append((n, []))
            size = 0
        out[-1][1].append(spec)
        size += one
    return out


def value(first: int, specs: list[Value], token: str | None = None) -> bytes:
    """A chunk's value: its first task number, its specs, and a staged batch's token if any."""
    out: Value = {"first": first, "specs": specs}
    if token:
        out["token"] = token
    return codec.pack(out)


def read(raw: bytes) -> tuple[int, list[Value], str | None]:
    """(first number, specs, token) of a chunk's value; raises ValueError for a value that is not one."""
    data = codec.unpack(raw)
    if not isinstance(data, dict) or not isinstance(data.get("first"), int) or not isinstance(data.get("specs"), list):
        raise ValueError("not a chunk")
    token = data.get("token")
    return data["first"], data["specs"], token if isinstance(token, str) else None


def committed(token: str | None, layer: Value) -> bool:
    """Is a chunk part of its layer (not a staged batch never committed)? See model.committed."""
    return token is None or token in layer.get("committed", [])


def tasks_of(layer: Value, chunk_values: Iterable[bytes], state: str) -> dict[int, Value]:
    """Every task of ``layer`` its committed chunks give, by number (for reads that show a layer)."""
    out: dict[int, Value] = {}
    for raw in chunk_values:
        first, specs, token = read(raw)
        if committed(token, layer):
            for n, spec in enumerate(specs, first):
                out[n] = task_of(layer, n, spec, state)
    return out


def state_in(layer: Value) -> str:
    """The state a task without a key has in ``layer``: QUEUED while the layer runs, else PENDING."""
    return states.QUEUED if layer.get("state") == states.RUNNING else states.PENDING
