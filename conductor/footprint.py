"""What a job stores: its values built as :meth:`Board.post` builds them, and the caps on them.

Pure (no etcd): ``conductor check`` and ``Board.post`` both call :func:`build` and :func:`check`,
so a job that post would refuse for its size fails check the same way, with the same message.
"""
from __future__ import annotations

from typing import Any

from . import codec, compensation, model
from .errors import InvalidSpec
from .model import Value
from .limits import MAX_JOB_BYTES, MAX_VALUE_BYTES
from .limits import human_bytes as _bytes


def build(spec: dict[str, Any], user: str, job_id: str,
          source: dict[str, Any]) -> tuple[Value, list[Value], list[list[Value]]]:
    """(job, layers, tasks per layer) for a validated spec, as they are first written."""
    job = model.new_job(job_id, spec, user, source)
    layers = [model.new_layer(job, i, lspec) for i, lspec in enumerate(spec["layers"])]
    tasks = [[model.new_task(layer, n, tspec) for n, tspec in enumerate(lspec["tasks"])]
             for layer, lspec in zip(layers, spec["layers"])]
    job["layers"] = [model.layer_summary(layer) for layer in layers]
    if spec.get("no_cache"):  # conductor/taskcache.py: no task of this job takes a cached result
        job["no_cache"] = True
    if spec.get("compensate"):
        _compensation(job, layers, tasks, spec["compensate"])
    return job, layers, tasks


def _compensation(job: Value, layers: list[Value], tasks: list[list[Value]], specs: list[dict[str, Any]]) -> None:
    """Append the compensation layers (conductor/compensation.py) after the job's own: layer values
    like the others, but kept out of the job's ``layers`` (so no order waits for them) and listed
    in its ``compensation`` instead."""
    first = len(layers)
    for j, cspec in enumerate(specs):
        layer = model.new_layer(job, first + j, cspec)
        layer.update(compensation=True, compensates=cspec.get("for"))
        layers.append(layer)
        tasks.append([{**model.new_task(layer, n, tspec), "compensation": True}
                      for n, tspec in enumerate(cspec["tasks"])])
    job["compensation"] = compensation.armed(layers[first:])


def check(job: Value, layers: list[Value], tasks: list[list[Value]]) -> None:
    """Refuse values over MAX_VALUE_BYTES each (naming the field) or MAX_JOB_BYTES in all.

    Raises InvalidSpec; says the size and the limit."""
    total = _one(job, "job")
    for li, layer in enumerate(layers):
        total += _one(layer, f"layers[{li}]")
        for ti, task in enumerate(tasks[li]):
            total += _one(task, f"layers[{li}].tasks[{ti}]")
    if total > MAX_JOB_BYTES:
        raise InvalidSpec("layers", f"the job would store {_bytes(total)}; a job may store at most "
                                    f"{_bytes(MAX_JOB_BYTES)}")


def _one(value: Value, field: str) -> int:
    size = len(codec.pack(value))
    if size > MAX_VALUE_BYTES:
        raise InvalidSpec(field, f"would be stored as {_bytes(size)}; one stored value may be at most "
                                 f"{_bytes(MAX_VALUE_BYTES)}")
    return size
