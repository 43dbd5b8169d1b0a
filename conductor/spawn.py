"""Spawn files: tasks a task writes to ``$CONDUCTOR_SPAWN`` join the next layer when it completes.

The file holds a JSON list of task specs (the same fields as in a job file), or a map with a
``tasks`` list. They go to the next layer: the first layer of the lowest order above the spawning
task's layer, which has not started yet. They are staged before the task's finish and committed
by the finish transaction itself, which is fenced by the claim: if the node dies at any point,
either the whole batch was added with the task's completion, or none of it was and the task runs
again. A bad file fails the task with the field named, like a bad job file.
"""
from __future__ import annotations

import json
from typing import Any

from . import spec
from .board import Board
from .claims import Claimed
from .control import Stager
from .errors import InvalidSpec, Refused
from .ops import mod_is, present

MAX_SPAWN = 100_000


def parse(data: bytes) -> list[Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSpec("", f"not valid JSON: {exc}") from None
    if isinstance(value, dict) and isinstance(value.get("tasks"), list):
        value = value["tasks"]
    if not isinstance(value, list):
        raise InvalidSpec("", "must hold a JSON list of tasks (or a map with a 'tasks' list)")
    if len(value) > MAX_SPAWN:
        raise InvalidSpec("", f"holds {len(value)} tasks, the limit is {MAX_SPAWN}")
    return value


def next_layer(job: dict[str, Any], layer_id: str) -> dict[str, Any]:
    """The layer spawned tasks go to: the first of the lowest order above this layer's."""
    layers = job.get("layers", [])
    mine = next((s for s in layers if s["id"] == layer_id), None)
    if mine is None:
        raise Refused(f"layer {layer_id} is not in its job")
    later = [s for s in layers if s["order"] > mine["order"]]
    if not later:
        raise Refused("there is no layer after this task's layer to add spawned tasks to")
    lowest = min(s["order"] for s in later)
    return min((s for s in later if s["order"] == lowest), key=lambda s: int(s["id"].rsplit(".", 1)[1]))


def stage(board: Board, claimed: Claimed, data: bytes, node: str) -> Stager:
    """Validate a spawn file and write its tasks, staged, into the next layer (fenced by the claim).
    Returns the stager whose commit ops go into the finish. Raises InvalidSpec or Refused."""
    task = claimed.task
    items = parse(data)
    target = next_layer(claimed.job, task["layer"])
    found = board.load(board.keys.layer(task["user"], target["id"]))
    if found is None:
        raise Refused(f"layer {target['id']} does not exist")
    layer = found[0]
    specs = [spec.fill_task_keys(spec.validate_task(item, f"[{i}]", layer.get("defaults", {}), layer["next"] + i),
                                 {**claimed.job.get("env", {}), **layer.get("env", {})}, f"[{i}]")  # flow control keys
             for i, item in enumerate(items)]
    stager = Stager(board, task["user"], target["id"], token=f"spawn-{task['id']}-{task['attempts']}")
    if specs:
        guard = [mod_is(board.keys.task(task["user"], task["id"]), claimed.task_rev),  # still our claim
                 present(board.keys.alive(claimed.lease))]
        stager.stage(specs, guard)
    return stager
