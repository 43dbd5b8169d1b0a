"""The values stored for jobs, layers and tasks, and the one way to change their state.

Values are plain maps (see ``docs/keyspace.md`` for every field) so that fields this version does
not know survive a read-modify-write. Every state change goes through :func:`move`, which checks
the transition table and appends a record (state, reason, node, time) to the value's capped
history, so a record is always written in the same put as the state it describes.
"""
from __future__ import annotations

import time
from typing import Any

from . import ids, states

# flow control (docs/flow/): what a task, layer or job may say about retries and deadlines
FLOW_FIELDS = ("retry", "retry_on", "fail_on", "start_within", "deadline")

MAX_RECORDS = 40  # history kept per object; older records are dropped and counted

Value = dict[str, Any]

_CHECKS = {"task": states.check_task, "layer": states.check_layer, "job": states.check_job}


def now() -> float:
    return round(time.time(), 3)


def move(value: Value, new_state: str, reason: str, node: str | None = None, at: float | None = None) -> Value:
    """Set ``value``'s state to ``new_state`` (checked against the table) and record why."""
    _CHECKS[value["kind"]](value["state"], new_state)
    value["state"] = new_state
    add_record(value, new_state, reason, node, at)
    return value


def add_record(value: Value, state: str, reason: str, node: str | None = None, at: float | None = None) -> None:
    records = value.setdefault("records", [])
    records.append({"state": state, "reason": reason, "node": node, "at": at or now()})
    if len(records) > MAX_RECORDS:
        dropped = len(records) - MAX_RECORDS
        del records[:dropped]
        value["records_dropped"] = value.get("records_dropped", 0) + dropped


def new_job(job_id: str, spec: dict[str, Any], user: str, source: dict[str, Any]) -> Value:
    at = now()
    job: Value = {
        "kind": "job", "id": job_id, "name": spec["name"], "description": spec.get("description", ""),
        "user": user, "state": states.PENDING, "created": at, "started": None, "ended": None,
        "env": spec.get("env", {}), "paused_at": at if spec.get("paused") else 0,
        "source": source, "tasks": sum(len(layer["tasks"]) for layer in spec["layers"]),
        "on_success": spec.get("on_success", []), "on_failure": spec.get("on_failure", []),
        "layers": [], "records": [],
    }
    if spec.get("deadline"):
        job["deadline"] = spec["deadline"]
    add_record(job, states.PENDING, f"posted by {user}", at=at)
    return job


def new_layer(job: Value, index: int, spec: dict[str, Any]) -> Value:
    at = job["created"]
    layer: Value = {
        "kind": "layer", "id": ids.layer_id(job["id"], index), "job": job["id"], "user": job["user"],
        "index": index, "name": spec["name"], "order": spec["order"], "state": states.PENDING,
        "env": spec.get("env", {}), "on_error": spec.get("on_error", "fail"),
        "paused_at": at if spec.get("paused") else 0, "tasks": len(spec["tasks"]),
        "next": len(spec["tasks"]), "enqueued": False, "started": None, "ended": None, "records": [],
        "defaults": spec.get("defaults", {}),
        "on_success": spec.get("on_success", []), "on_failure": spec.get("on_failure", []),
    }
    if spec.get("min_success") is not None:
        layer["min_success"] = spec["min_success"]
    return layer


def new_task(layer: Value, number: int, spec: dict[str, Any]) -> Value:
    task: Value = {
        "kind": "task", "id": ids.task_id(layer["job"], layer["index"], number), "job": layer["job"],
        "layer": layer["id"], "user": layer["user"], "name": spec["name"], "cmd": spec["cmd"],
        "shell": spec.get("shell", False), "env": spec.get("env", {}), "cwd": spec.get("cwd"),
        "timeout": spec.get("timeout"), "max_attempts": spec.get("max_attempts", 3),
        "max_disruptions": spec.get("max_disruptions", 10),
        "priority": spec.get("priority", 0), "needs": spec.get("needs", {}),
        "paused_at": now() if spec.get("paused") else 0,
        "state": states.PENDING, "attempts": 0, "failures": 0, "disruptions": 0, "node": None, "exit_code": None, "reason": None,
        "started": None, "ended": None, "usage": None, "records": [],
    }
    if spec.get("image"):
        task["image"] = spec["image"]
    if spec.get("secrets"):
        task["secrets"] = spec["secrets"]
    if spec.get("cache"):  # conductor/taskcache.py
        task["cache"] = spec["cache"]
    for name in ("concurrency", "rate"):  # flow control (conductor/concurrency.py, conductor/ratelimit.py)
        if spec.get(name):
            task[name] = spec[name]
    for name in FLOW_FIELDS:  # retries and deadlines (docs/flow/): only when set, values stay small
        if spec.get(name) is not None:
            task[name] = spec[name]
    return task


def layer_summary(layer: Value) -> Value:
    """What a job value keeps of each layer, so that one read shows a job's shape and progress."""
    return {"id": layer["id"], "name": layer["name"], "order": layer["order"], "state": layer["state"],
            "on_error": layer["on_error"], "tasks": layer["tasks"]}


def summary_tuples(job: Value) -> list[tuple[int, str, str]]:
    """(order, state, policy) per layer; a layer a user killed counts as failing whatever its policy."""
    return [(s["order"], s["state"], "fail" if s.get("killed") else s["on_error"]) for s in job["layers"]]


def committed(task: Value, layer: Value) -> bool:
    """Is this task part of its layer? A batch of added or spawned tasks is written first and
    committed by one transaction on the layer; until then (or if its writer died) it is not."""
    return "staged" not in task or task["staged"] in layer.get("committed", [])


def is_paused(value: Value) -> bool:
    return bool(value.get("paused_at"))
