"""Compensation: layers that undo a failed job's completed work, in reverse order.

A job file may hold ``compensate:``, a list of layers (the same fields as a layer, without
``order``, ``paused``, ``on_success`` and ``on_failure``) each with ``for: <layer name>``, the layer
whose work it undoes, or no ``for`` (a clean-up that runs whatever completed). When the job ends
ERRORED (a task failed, or a user killed it) and no layer of it still runs, the compensation layers
whose ``for`` layer COMPLETED run one at a time: those of the layer that completed last (highest
order, then highest index) first, then on down; the ones without ``for`` run last. Each task of them
sees which task failed and why (:func:`failure_env`). The job stays ERRORED; the compensation's own
state (PENDING until needed, RUNNING, then COMPLETED, or ERRORED if any of its layers errored, or
SKIPPED when the job completed or nothing completed) is kept in the job value's ``compensation``.

The rule (:func:`order`, :func:`step`) is pure: :mod:`conductor.layerplan` applies it in a settle.
Compensation runs once per job: a retry after it does not arm it again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from . import states
from .errors import InvalidSpec
from .model import Value

if TYPE_CHECKING:
    from .keys import Keys
    from .store import Store

MAX_COMPENSATE = 20
NOT_IN_COMPENSATION = {"order", "paused", "on_success", "on_failure"}

ENV_TASK, ENV_TASK_NAME = "CONDUCTOR_FAILED_TASK", "CONDUCTOR_FAILED_TASK_NAME"
ENV_LAYER, ENV_REASON, ENV_COMPENSATES = "CONDUCTOR_FAILED_LAYER", "CONDUCTOR_FAILED_REASON", "CONDUCTOR_COMPENSATES"


# ---- the spec -------------------------------------------------------------------------------

def validate(value: Any, layer_names: Sequence[str], inherited: dict[str, Any],
             validate_layer: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``compensate`` list -> layer specs, each with ``for`` (a layer name or None), each
    checked by ``validate_layer`` (spec's, passed in: spec calls this). Raises InvalidSpec naming
    the field (``compensate[1].for``)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidSpec("compensate", "must be a list of layers, each with tasks and for: <layer name>")
    if len(value) > MAX_COMPENSATE:
        raise InvalidSpec("compensate", f"has {len(value)} layers, the limit is {MAX_COMPENSATE}")
    out = []
    for j, item in enumerate(value):
        where = f"compensate[{j}]"
        if not isinstance(item, dict):
            raise InvalidSpec(where, "must be a map with tasks and for: <layer name>")
        for name in item:
            if name in NOT_IN_COMPENSATION:
                raise InvalidSpec(f"{where}.{name}", "is not allowed on a compensation layer: they run one "
                                                     "at a time, in reverse order of the layers they undo")
        target = item.get("for")
        if target is not None and target not in layer_names:
            raise InvalidSpec(f"{where}.for", f"names no layer of this job: {target!r} (layers: "
                                              f"{', '.join(layer_names)})")
        layer = validate_layer({k: v for k, v in item.items() if k != "for"}, where, 0, inherited)
        if item.get("name") is None:
            layer["name"] = f"compensate-{j}"
        out.append({**layer, "for": target})
    taken = set(layer_names)
    for j, layer in enumerate(out):
        if layer["name"] in taken:
            raise InvalidSpec(f"compensate[{j}].name", f"layer name {layer['name']!r} is used twice in this job")
        taken.add(layer["name"])
    return out


def armed(layers: list[Value]) -> Value:
    """The ``compensation`` a job starts with, for its compensation layers' values."""
    return {"state": states.PENDING, "reason": "runs if the job fails", "queue": [],
            "layers": [{"id": layer["id"], "index": layer["index"], "name": layer["name"],
                        "for": layer.get("compensates"), "state": layer["state"], "tasks": layer["tasks"]}
                       for layer in layers]}


# ---- the rule -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """What a settle does for the compensation now: its new state and reason, the layer to start
    (None: none), the layers that will never run, and the order they run in (set once)."""

    state: str
    reason: str
    start: int | None = None
    skip: tuple[int, ...] = ()
    queue: tuple[int, ...] | None = None


def order(regular: Sequence[Mapping[str, Any]], comps: Sequence[Mapping[str, Any]]) -> list[int]:
    """The indices of the compensation layers to run, in the order they run: for each COMPLETED
    layer, latest (highest order, then index) first, the compensation layers naming it in the order
    they are written; then those naming no layer."""
    done = sorted((s for s in regular if s["state"] == states.COMPLETED),
                  key=lambda s: (s["order"], int(s["id"].rsplit(".", 1)[1])), reverse=True)
    out = [c["index"] for s in done for c in comps if c.get("for") == s["name"]]
    return out + [c["index"] for c in comps if not c.get("for")]


def step(job: Value, comp_states: Mapping[int, str]) -> Step | None:
    """The next step of ``job``'s compensation, given its compensation layers' states by index;
    None when there is nothing to do now."""
    comp = job.get("compensation")
    if not comp:
        return None
    every = tuple(c["index"] for c in comp["layers"])
    if comp["state"] == states.PENDING:
        if job["state"] == states.COMPLETED:
            return Step(states.SKIPPED, "the job completed", skip=every)
        if job["state"] != states.ERRORED or any(s["state"] == states.RUNNING for s in job["layers"]):
            return None
        queue = order(job["layers"], comp["layers"])
        skip = tuple(i for i in every if i not in queue)
        if not queue:
            return Step(states.SKIPPED, "nothing to undo: no layer it names completed", skip=skip, queue=())
        return Step(states.RUNNING, "the job failed", start=queue[0], skip=skip, queue=tuple(queue))
    if comp["state"] != states.RUNNING:
        return None
    for i in comp["queue"]:
        if comp_states[i] == states.RUNNING:
            return None
        if comp_states[i] == states.PENDING:
            return Step(states.RUNNING, comp["reason"], start=i)
    errored = [i for i in comp["queue"] if comp_states[i] == states.ERRORED]
    if errored:
        return Step(states.ERRORED, f"{len(errored)} compensation layer(s) errored")
    return Step(states.COMPLETED, "every compensation layer is done")


def busy(job: Value) -> bool:
    """Is the job's compensation running (so the job must stay in ``active/`` to be settled)?"""
    return (job.get("compensation") or {}).get("state") == states.RUNNING


# ---- what its tasks see ---------------------------------------------------------------------

def failure_env(layer: Value, failed: Value | None, job: Value) -> dict[str, str]:
    """The variables a compensation task gets: the failed task (the first ERRORED task of the
    job's own layers, by id; none when the job was killed before any task failed) and why, and the
    layer this one compensates (empty for one that names none)."""
    records = job.get("records") or [{}]
    if failed is None:
        reason = next((r.get("reason", "") for r in reversed(records) if "killed" in r.get("reason", "")),
                      records[-1].get("reason", ""))
        return {ENV_TASK: "", ENV_TASK_NAME: "", ENV_LAYER: "", ENV_REASON: reason,
                ENV_COMPENSATES: layer.get("compensates") or ""}
    layer_name = next((s["name"] for s in job.get("layers", []) if s["id"] == failed["layer"]), "")
    return {ENV_TASK: failed["id"], ENV_TASK_NAME: failed["name"], ENV_LAYER: layer_name,
            ENV_REASON: failed.get("reason") or "", ENV_COMPENSATES: layer.get("compensates") or ""}


# ---- the read a node makes before starting a compensation task ------------------------------

def find_failed(store: "Store", keys: "Keys", job: Value) -> Value | None:
    """The task whose failure a compensation answers: the first ERRORED task (by id) of the job's
    own layers, or None. Reads the tasks of the layers whose counts say a task ended ERRORED
    (conductor/counts.py), in pages, until it finds one. Raises StoreError."""
    from . import codec, counts

    ended = counts.total(kv.value for kv in store.iter_prefix(keys.count(job["user"], job["id"])))
    for layer in job.get("layers", []):
        if not counts.of_layer(ended, layer["id"])[states.ERRORED]:
            continue
        found = [codec.unpack(kv.value) for kv in store.iter_prefix(keys.task(job["user"], layer["id"] + "."), page=200)]
        failed = sorted((t for t in found if t.get("state") == states.ERRORED), key=lambda t: ids_order(t["id"]))
        if failed:
            return failed[0]
    return None


def ids_order(task_id: str) -> tuple[int, ...]:
    """A task id's numbers, for ordering by layer and position (``j.2.10`` after ``j.2.9``)."""
    return tuple(int(part) for part in task_id.split(".")[1:])


__all__ = ["Step", "armed", "busy", "failure_env", "find_failed", "order", "step", "validate"]
