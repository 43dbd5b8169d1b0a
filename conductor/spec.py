"""Job files: load YAML or JSON, validate every field, return one normalised spec.

Nothing here touches etcd: a spec is checked whole before the first write, and the first problem
found raises :class:`InvalidSpec` naming the field (``layers[1].tasks[0].cmd``) and the reason.
The format is a superset of Igor's job JSON; see ``docs/jobs.md``.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from . import compensation, taskcache
from .model import FLOW_FIELDS
from . import flowspec as flow
from .errors import InvalidSpec
from .fields import _bool, _finite, _int, _kind, _scalar_text, _short, _str, parse_duration  # noqa: F401
from .limits import (  # noqa: F401 - the caps are spec's public names too
    ALIAS_FACTOR, KIB, MAX_ALIAS_NODES, MAX_ARG_BYTES, MAX_DEPTH, MAX_DIGITS, MAX_EXEC_BYTES, MAX_FILE_BYTES,
    MAX_CPUS, MAX_JOB_BYTES, MAX_MEMORY, MAX_TASKS, MAX_TIMEOUT, MAX_VALUE_BYTES, MIB)
from .limits import human_bytes as _bytes

from .fields import MAX_NAME  # noqa: E402,F401 - one home, spec re-exports it
MAX_LAYERS = 1000  # the job value keeps a line per layer; it must stay well under etcd's 1.5 MiB

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_MAX_DISRUPTIONS = 10  # runs ended by a lost, fenced or stopping node (see lifecycle.py)
ON_ERROR = ("fail", "continue")

KEY_FIELDS = {"concurrency", "rate"}  # flow control keys: conductor/concurrency.py, conductor/ratelimit.py
JOB_FIELDS = {"name", "description", "layers", "env", "paused", "priority", "max_attempts", "timeout",
              "cwd", "needs", "max_disruptions", "cache", "no_cache", "compensate", "retry", "retry_on", "fail_on",
              "start_within", "deadline"} | KEY_FIELDS
LAYER_FIELDS = {"name", "order", "tasks", "env", "paused", "priority", "on_error", "max_attempts",
                "timeout", "cwd", "needs", "on_success", "on_failure", "max_disruptions", "cache", "retry", "retry_on",
                "fail_on", "start_within", "min_success"} | KEY_FIELDS
TASK_FIELDS = {"name", "cmd", "shell", "image", "env", "cwd", "timeout", "max_attempts", "priority",
               "needs", "paused", "max_disruptions", "cache", "retry", "retry_on", "fail_on", "start_within"} | KEY_FIELDS
NEEDS_FIELDS = {"slots", "labels", "memory", "cpus", "node"}
INHERITED = ("max_attempts", "timeout", "priority", "cwd", "needs", "max_disruptions", "cache", "retry", "retry_on",
             "fail_on", "start_within", "deadline")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_LABEL = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_NODE = re.compile(r"^[^\s/]+$")  # a node name is one segment of its key nodes/<name>




def load_file(path: str) -> dict[str, Any]:
    """Read a job file (``-`` for stdin) into a map, or raise InvalidSpec naming the file.

    A file over MAX_FILE_BYTES is refused before it is read."""
    if path == "-":
        text, where = sys.stdin.read(MAX_FILE_BYTES + 1), "stdin"
        _file_size(len(text.encode("utf-8", "surrogatepass")), where)
    else:
        p = Path(path)
        if not p.exists():
            raise InvalidSpec("file", f"{path}: no such file")
        if p.is_dir():
            raise InvalidSpec("file", f"{path}: is a directory, not a job file")
        try:
            _file_size(p.stat().st_size, path)
            text, where = p.read_text(encoding="utf-8"), path
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidSpec("file", f"{path}: cannot read: {exc}") from None
    return parse_text(text, where)


def _file_size(size: int, where: str) -> None:
    if size > MAX_FILE_BYTES:
        raise InvalidSpec("file", f"{where}: is {_bytes(size)}; a job file may be at most {_bytes(MAX_FILE_BYTES)}")


def parse_text(text: str, where: str = "input") -> dict[str, Any]:
    data = parse_any(text, where)
    if not isinstance(data, dict):
        raise InvalidSpec("file", f"{where}: must hold a map with 'name' and 'layers', not a {_kind(data)}")
    return data


def parse_any(text: str, where: str = "input") -> Any:
    """YAML or JSON text -> whatever it holds; raises InvalidSpec naming where and why (deep
    nesting, duplicate keys, alias bombs, numbers and text that are not sane: see jobfile)."""
    from . import jobfile  # imports this module's caps

    if not text.strip():
        raise InvalidSpec("file", f"{where}: is empty")
    return jobfile.parse(text, where)




def _unknown(data: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            raise InvalidSpec(f"{where}{'.' if where else ''}{key}", f"unknown field (known: {hint})")














def parse_size(value: Any, field: str) -> int:
    """``536870912``, ``"512M"``, ``"2GiB"`` -> bytes."""
    if isinstance(value, bool):
        raise InvalidSpec(field, "must be a size like 512M or 2GiB")
    if isinstance(value, int):
        number = _finite(value, field)
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        unit = (m.group(2) or "").lower().rstrip("b")
        number = _finite(float(m.group(1)) * _SIZE_UNITS[unit], field)
    else:
        raise InvalidSpec(field, f"must be a size like 512M or 2GiB, not {_short(value)}")
    if number < 0:
        raise InvalidSpec(field, "must not be negative")
    if number > MAX_MEMORY:
        raise InvalidSpec(field, f"is too large: {number:g} bytes, the limit is {MAX_MEMORY} (1 PiB)")
    return int(number)


def parse_env(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a map of NAME: value, not a {_kind(value)}")
    out: dict[str, str] = {}
    for name, val in value.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise InvalidSpec(f"{field}.{name}", "is not a valid environment variable name")
        if not isinstance(val, (str, int, float)):
            raise InvalidSpec(f"{field}.{name}", f"must be a string or a number, not a {_kind(val)}")
        text = _scalar_text(val)
        if "\0" in text:
            raise InvalidSpec(f"{field}.{name}", "must not contain a NUL byte")
        _arg_size(f"{name}={text}", f"{field}.{name}", "as NAME=value ")
        out[name] = text
    return out


def _utf8_len(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return len(text.encode("utf-8", "surrogatepass"))  # refused elsewhere, naming the field


def _arg_size(text: str, field: str, what: str = "") -> None:
    """Refuse a string exec would refuse (E2BIG): with its NUL, at most MAX_ARG_BYTES."""
    size = _utf8_len(text) + 1
    if size > MAX_ARG_BYTES:
        raise InvalidSpec(field, f"is {_bytes(size)} {what}with its NUL; exec takes at most "
                                 f"{_bytes(MAX_ARG_BYTES)} per string (Linux MAX_ARG_STRLEN)")


def parse_needs(value: Any, field: str) -> dict[str, Any]:
    """A needs map -> its normalised form (see docs/jobs.md, "Needs"); raises InvalidSpec."""
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a map with slots, cpus, memory, labels or node, not a {_kind(value)}")
    _unknown(value, NEEDS_FIELDS, field)
    needs: dict[str, Any] = {}
    if "slots" in value:
        needs["slots"] = _int(value["slots"], f"{field}.slots", minimum=1, maximum=4096)
    if "cpus" in value:
        needs["cpus"] = parse_cpus(value["cpus"], f"{field}.cpus")
    if "memory" in value:
        needs["memory"] = parse_size(value["memory"], f"{field}.memory")
    if "labels" in value:
        labels = value["labels"]
        if not isinstance(labels, dict):
            raise InvalidSpec(f"{field}.labels", f"must be a map of label: value, not a {_kind(labels)}")
        needs["labels"] = parse_labels(labels, f"{field}.labels")
    if "node" in value:
        needs["node"] = parse_node_name(value["node"], f"{field}.node")
    return needs




def parse_cpus(value: Any, field: str) -> int | float:
    """``2``, ``0.5`` -> CPUs a node must have (more than 0, at most MAX_CPUS); a whole number
    stays an int."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidSpec(field, f"must be a number of CPUs like 2 or 0.5, not a {_kind(value)}")
    number = _finite(value, field)
    if number <= 0:
        raise InvalidSpec(field, f"must be more than zero, not {_scalar_text(value)}")
    if number > MAX_CPUS:
        raise InvalidSpec(field, f"is too large: {_short(value)}, the limit is {MAX_CPUS}")
    return int(number) if number.is_integer() else number


def parse_node_name(value: Any, field: str) -> str:
    """A node name as ``conductor run --name`` gives it: no '/', no whitespace (a number written
    unquoted, ``node: 42``, is taken as its text, as for labels)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = _scalar_text(value)
    name = _str(value, field)
    if not _NODE.match(name) or not name.isprintable():
        raise InvalidSpec(field, f"{_short(name)} is not a node name (no '/', spaces or control characters)")
    return name


def parse_labels(labels: dict[str, Any], field: str) -> dict[str, str]:
    out = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL.match(k):
            raise InvalidSpec(f"{field}.{k}", "label names are letters, digits and . _ - /")
        if not isinstance(v, (str, int, float)):
            raise InvalidSpec(f"{field}.{k}", f"must be a string, not a {_kind(v)}")
        out[k] = _scalar_text(v)
    return out


def _common(data: dict[str, Any], where: str, inherited: dict[str, Any]) -> dict[str, Any]:
    """The fields a job or layer passes down to its tasks, validated, over what it inherited."""
    out = dict(inherited)
    if "max_attempts" in data:
        out["max_attempts"] = _int(data["max_attempts"], f"{where}max_attempts", minimum=1, maximum=1000)
    if "max_disruptions" in data:
        out["max_disruptions"] = _int(data["max_disruptions"], f"{where}max_disruptions", minimum=1, maximum=1000)
    if "timeout" in data and data["timeout"] is not None:
        out["timeout"] = parse_duration(data["timeout"], f"{where}timeout", MAX_TIMEOUT)
    if "priority" in data:
        out["priority"] = _int(data["priority"], f"{where}priority", minimum=-1000, maximum=1000)
    if "cwd" in data and data["cwd"] is not None:
        out["cwd"] = _str(data["cwd"], f"{where}cwd", limit=4096)
    if "needs" in data and data["needs"] is not None:
        out["needs"] = {**out.get("needs", {}), **parse_needs(data["needs"], f"{where}needs")}
    if "cache" in data and data["cache"] is not None:  # task caching: conductor/taskcache.py
        out["cache"] = taskcache.parse(data["cache"], f"{where}cache")
    out.update(flow.parse_common(data, where, out))
    _flow(data, where, out)
    return out


def _flow(data: dict[str, Any], where: str, out: dict[str, Any]) -> None:
    """Flow control fields (a task's own replace what it inherits; ``null`` turns one off)."""
    from . import concurrency, ratelimit

    for name, parse in (("concurrency", concurrency.parse), ("rate", ratelimit.parse)):
        if name in data:
            if data[name] is None:
                out.pop(name, None)
            else:
                out[name] = parse(data[name], f"{where}{name}")


def fill_flow_keys(job: dict[str, Any]) -> None:
    """Fill the ``{NAME}`` placeholders of every task's concurrency and rate key from the task's
    environment (job env, then layer env, then task env), in place. Raises InvalidSpec naming the
    task's field when a name is not set."""
    for li, layer in enumerate(job["layers"]):
        for ti, task in enumerate(layer["tasks"]):
            fill_task_keys(task, {**job.get("env", {}), **layer.get("env", {})}, f"layers[{li}].tasks[{ti}]")


def fill_task_keys(task: dict[str, Any], base_env: dict[str, str], where: str) -> dict[str, Any]:
    """One validated task's concurrency and rate keys filled from ``base_env`` (job and layer env)
    overlaid with its own env, in place (also for tasks added later). Raises InvalidSpec."""
    from . import concurrency

    env = {**base_env, **task.get("env", {})}
    for name in ("concurrency", "rate"):
        if task.get(name):
            task[name] = concurrency.fill(task[name], env, f"{where}.{name}.key")
    return task


def _cmd(task: dict[str, Any], where: str, shell: bool) -> list[str]:
    field = f"{where}.cmd"
    cmd = task.get("cmd")
    if cmd is None:
        if task.get("image"):
            return []
        raise InvalidSpec(field, "is required: the command to run, as a list like [echo, hello]")
    if isinstance(cmd, str):
        if shell:
            if not cmd.strip():
                raise InvalidSpec(field, "must not be empty")
            _arg_size(cmd, field)
            return [cmd]
        raise InvalidSpec(field, "must be a list of strings (an argv) like [echo, hello]; "
                                 "to run a string through /bin/sh, also set shell: true")
    if not isinstance(cmd, list):
        raise InvalidSpec(field, f"must be a list of strings, not a {_kind(cmd)}")
    if not cmd:
        raise InvalidSpec(field, "must not be empty")
    argv = []
    for i, arg in enumerate(cmd):
        if not isinstance(arg, (str, int, float)):
            raise InvalidSpec(f"{field}[{i}]", f"must be a string, not a {_kind(arg)}")
        text = _scalar_text(arg)
        if "\0" in text:
            raise InvalidSpec(f"{field}[{i}]", "must not contain a NUL byte")
        _arg_size(text, f"{field}[{i}]")
        argv.append(text)
    if not argv[0].strip():
        raise InvalidSpec(f"{field}[0]", "the program name must not be empty")
    return argv


def validate_task(task: Any, where: str, inherited: dict[str, Any], number: int = 0,
                  sized: bool = True) -> dict[str, Any]:
    """One task map -> normalised task spec (raises InvalidSpec naming ``where``). ``sized`` False
    leaves out the size cap: a whole job's tasks are held to it where their stored values are
    built (conductor/footprint.py, which post and ``conductor check`` both run)."""
    if not isinstance(task, dict):
        raise InvalidSpec(where, f"must be a map with at least 'cmd', not a {_kind(task)}")
    _unknown(task, TASK_FIELDS, where)
    shell = _bool(task.get("shell", False), f"{where}.shell")
    out: dict[str, Any] = {
        "name": _str(task["name"], f"{where}.name") if task.get("name") is not None else f"task-{number}",
        "shell": shell,
        "env": parse_env(task.get("env"), f"{where}.env"),
        "paused": _bool(task.get("paused", False), f"{where}.paused"),
    }
    if task.get("image") is not None:
        out["image"] = _str(task["image"], f"{where}.image", limit=1024)
        if shell:
            raise InvalidSpec(f"{where}.shell", "cannot be used with image: give the container's argv in cmd")
    out["cmd"] = _cmd(task, where, shell)
    merged = _common(task, f"{where}.", inherited)
    out["max_attempts"] = merged.get("max_attempts", DEFAULT_MAX_ATTEMPTS)
    out["max_disruptions"] = merged.get("max_disruptions", DEFAULT_MAX_DISRUPTIONS)
    out["priority"] = merged.get("priority", 0)
    out["timeout"] = merged.get("timeout")
    out["cwd"] = merged.get("cwd")
    out["needs"] = merged.get("needs", {})
    if merged.get("cache"):
        out["cache"] = merged["cache"]
    out.update({name: merged[name] for name in FLOW_FIELDS if merged.get(name) is not None})
    for name in KEY_FIELDS & set(merged):
        out[name] = dict(merged[name])
    size = len(json.dumps(out)) if sized else 0  # tasks added later (add-task, spawn files): here
    if size > MAX_VALUE_BYTES:
        raise InvalidSpec(where, f"is {_bytes(size)} as JSON; one task may be at most {_bytes(MAX_VALUE_BYTES)}")
    return out


def validate_layer(layer: Any, where: str, index: int, inherited: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(layer, dict):
        raise InvalidSpec(where, f"must be a map with 'tasks', not a {_kind(layer)}")
    _unknown(layer, LAYER_FIELDS, where)
    tasks = layer.get("tasks", [])
    if tasks is None:
        tasks = []
    if not isinstance(tasks, list):
        raise InvalidSpec(f"{where}.tasks", f"must be a list, not a {_kind(tasks)}")
    on_error = layer.get("on_error", "fail")
    if on_error not in ON_ERROR:
        raise InvalidSpec(f"{where}.on_error", f"must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
    defaults = _common(layer, f"{where}.", inherited)
    out = {
        "name": _str(layer["name"], f"{where}.name") if layer.get("name") is not None else f"layer-{index}",
        "order": _int(layer.get("order", index), f"{where}.order", minimum=-10**9, maximum=10**9),
        "env": parse_env(layer.get("env"), f"{where}.env"),
        "paused": _bool(layer.get("paused", False), f"{where}.paused"),
        "on_error": on_error,
        "defaults": defaults,  # what tasks added later (add-task, spawn files) inherit
        "tasks": [validate_task(t, f"{where}.tasks[{i}]", defaults, i, sized=False) for i, t in enumerate(tasks)],
    }
    _unique([t["name"] for t in out["tasks"]], f"{where}.tasks", "task")
    share = flow.parse_share(layer.get("min_success"), f"{where}.min_success")
    if share is not None:
        out["min_success"] = share
    return out


def _unique(names: list[str], where: str, what: str) -> None:
    """Refuse a name used twice (ids and views tell objects apart by it), naming both places."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise InvalidSpec(f"{where}[{i}].name", f"{what} name {name!r} is also the name of "
                                                    f"{where}[{first[name]}]")
        first[name] = i


def check_exec(job: dict[str, Any]) -> None:
    """Refuse a task whose argv and merged env (job, then layer, then task env: what the node
    passes to exec) exceed MAX_EXEC_BYTES, naming the task's env (or cmd, when argv is most)."""
    job_env = job.get("env", {})
    for li, layer in enumerate(job["layers"]):
        base = {**job_env, **layer.get("env", {})}
        base_size = sum(_env_size(k, v) for k, v in base.items())
        for ti, task in enumerate(layer["tasks"]):
            argv = sum(_utf8_len(a) + 1 for a in task["cmd"])
            env = base_size + sum(_env_size(k, v) - (_env_size(k, base[k]) if k in base else 0)
                                  for k, v in task["env"].items())
            if argv + env > MAX_EXEC_BYTES:
                field = f"layers[{li}].tasks[{ti}].{'env' if env >= argv else 'cmd'}"
                raise InvalidSpec(field, f"argv and environment (job, layer and task env merged) come to "
                                         f"{_bytes(argv + env)}; exec takes at most {_bytes(MAX_EXEC_BYTES)}")


def _env_size(name: str, value: str) -> int:
    return _utf8_len(name) + _utf8_len(value) + 2  # '=' and NUL


def validate_job(data: Any) -> dict[str, Any]:
    """A job map -> normalised job spec. Raises InvalidSpec naming the first bad field.

    Checks what exec and etcd would refuse too (sizes, text, numbers); :func:`check_stored` adds
    the stored-size caps, which need the values as post encodes them."""
    from .jobfile import check_values  # a job given as a map (the API) gets the file's checks

    if not isinstance(data, dict):
        raise InvalidSpec("", f"a job must be a map with 'name' and 'layers', not a {_kind(data)}")
    check_values(data)
    _unknown(data, JOB_FIELDS, "")
    if "layers" not in data:
        raise InvalidSpec("layers", "is required: a list of layers, each with tasks")
    layers = data["layers"]
    if not isinstance(layers, list):
        raise InvalidSpec("layers", f"must be a list, not a {_kind(layers)}")
    if not layers:
        raise InvalidSpec("layers", "must hold at least one layer")
    if len(layers) > MAX_LAYERS:
        raise InvalidSpec("layers", f"has {len(layers)} layers, the limit is {MAX_LAYERS}")
    _count_tasks(layers)
    defaults = _common(data, "", {})
    if data.get("deadline") is not None:
        defaults["deadline"] = flow.parse_deadline(data["deadline"], "deadline")
    name = data.get("name")
    job: dict[str, Any] = {
        "name": _str(name, "name") if name is not None else "job",
        "description": _str(data.get("description", ""), "description", empty=True, limit=4000),
        "env": parse_env(data.get("env"), "env"),
        "paused": _bool(data.get("paused", False), "paused"),
        "layers": [validate_layer(layer, f"layers[{i}]", i, defaults) for i, layer in enumerate(layers)],
    }
    if defaults.get("deadline"):
        job["deadline"] = defaults["deadline"]
    _unique([layer["name"] for layer in job["layers"]], "layers", "layer")
    fill_flow_keys(job)
    _cache_and_compensation(job, data, defaults)
    return job


def _cache_and_compensation(job: dict[str, Any], data: dict[str, Any], defaults: dict[str, Any]) -> None:
    """``no_cache`` and ``compensate`` of a job (issue 12: conductor/taskcache.py,
    conductor/compensation.py), then the exec sizes and cache keys of every task."""
    if _bool(data.get("no_cache", False), "no_cache"):
        job["no_cache"] = True
    compensate = compensation.validate(data.get("compensate"), [la["name"] for la in job["layers"]], defaults,
                                       validate_layer)
    if compensate:
        job["compensate"] = compensate
    for field, layers in (("layers", job["layers"]), ("compensate", compensate)):
        try:
            check_exec({**job, "layers": layers})
            taskcache.check_placeholders({**job, "layers": layers})
        except InvalidSpec as exc:  # both name a field layers[i]...: say which list it is in
            raise InvalidSpec(field + exc.field[len("layers"):], exc.reason) from None


def _count_tasks(layers: list[Any]) -> None:
    """Refuse more than MAX_TASKS tasks before validating any (that would take a while)."""
    n_tasks = sum(len(layer["tasks"]) for layer in layers
                  if isinstance(layer, dict) and isinstance(layer.get("tasks"), list))
    if n_tasks > MAX_TASKS:
        raise InvalidSpec("layers", f"hold {n_tasks} tasks, the limit for one job is {MAX_TASKS}")


def check_stored(job: dict[str, Any], user: str, source: dict[str, Any],
                 meta: dict[str, Any] | None = None) -> None:
    """Refuse a validated job whose stored values would break the caps (MAX_VALUE_BYTES each,
    MAX_JOB_BYTES in all): the values are built and encoded exactly as post builds them (give the
    same user, source and template meta), without etcd, so ``conductor check`` and ``conductor
    post`` refuse the same jobs with the same message. Raises InvalidSpec."""
    from . import footprint

    job = {**job, "on_success": (meta or {}).get("on_success", []), "on_failure": (meta or {}).get("on_failure", [])}
    footprint.check(*footprint.build(job, user, "0" * 16, source))
