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

import yaml

from .errors import InvalidSpec

MAX_TASK_SPEC_BYTES = 64 * 1024
MAX_NAME = 200
MAX_LAYERS = 1000  # the job value keeps a line per layer; it must stay well under etcd's 1.5 MiB
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_MAX_DISRUPTIONS = 10  # runs ended by a lost, fenced or stopping node (see lifecycle.py)
ON_ERROR = ("fail", "continue")

JOB_FIELDS = {"name", "description", "layers", "env", "paused", "priority", "max_attempts", "timeout",
              "cwd", "needs", "max_disruptions"}
LAYER_FIELDS = {"name", "order", "tasks", "env", "paused", "priority", "on_error", "max_attempts",
                "timeout", "cwd", "needs", "on_success", "on_failure", "max_disruptions"}
TASK_FIELDS = {"name", "cmd", "shell", "image", "env", "cwd", "timeout", "max_attempts", "priority",
               "needs", "paused", "max_disruptions"}
NEEDS_FIELDS = {"slots", "labels", "memory"}
INHERITED = ("max_attempts", "timeout", "priority", "cwd", "needs", "max_disruptions")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
               "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}
_LABEL = re.compile(r"^[A-Za-z0-9_.\-/]+$")


class _Int(int):
    """An int that remembers how it was written (``010`` stays ``010`` in an argv)."""

    source: str


class _Float(float):
    source: str


class _Loader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's scalars: only true/false are booleans (not yes/no/on/off),
    no sexagesimal or 0-prefixed octal numbers, and numbers keep their source text."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                           "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    value = _Int(int(text, 0) if text.startswith(("0o", "0x")) else int(text))
    value.source = text
    return value


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node)
    value = _Float(float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf")
                         .replace(".nan", "nan").replace(".NaN", "nan").replace(".NAN", "nan")))
    value.source = text
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _scalar_text(value: Any) -> str:
    """How a scalar was written: numbers keep their source text, booleans are true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return getattr(value, "source", None) or str(value)


def load_file(path: str) -> dict[str, Any]:
    """Read a job file (``-`` for stdin) into a map, or raise InvalidSpec naming the file."""
    if path == "-":
        text, where = sys.stdin.read(), "stdin"
    else:
        p = Path(path)
        if not p.exists():
            raise InvalidSpec("file", f"{path}: no such file")
        if p.is_dir():
            raise InvalidSpec("file", f"{path}: is a directory, not a job file")
        try:
            text, where = p.read_text(encoding="utf-8"), path
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidSpec("file", f"{path}: cannot read: {exc}") from None
    return parse_text(text, where)


def parse_text(text: str, where: str = "input") -> dict[str, Any]:
    data = parse_any(text, where)
    if not isinstance(data, dict):
        raise InvalidSpec("file", f"{where}: must hold a map with 'name' and 'layers', not a {_kind(data)}")
    return data


def parse_any(text: str, where: str = "input") -> Any:
    """YAML or JSON text -> whatever it holds; raises InvalidSpec naming where and why."""
    if not text.strip():
        raise InvalidSpec("file", f"{where}: is empty")
    try:
        data = json.loads(text) if text.lstrip().startswith(("{", "[")) else yaml.load(text, Loader=_Loader)
    except json.JSONDecodeError as exc:
        raise InvalidSpec("file", f"{where}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidSpec("file", f"{where}: not valid YAML: {at}{problem}") from None
    return data


def _kind(value: Any) -> str:
    return {dict: "map", list: "list", str: "string", bool: "boolean", int: "number",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _unknown(data: dict[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            raise InvalidSpec(f"{where}{'.' if where else ''}{key}", f"unknown field (known: {hint})")


def _str(value: Any, field: str, *, empty: bool = False, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str):
        raise InvalidSpec(field, f"must be a string, not a {_kind(value)}")
    if not empty and not value.strip():
        raise InvalidSpec(field, "must not be empty")
    if len(value) > limit:
        raise InvalidSpec(field, f"is {len(value)} characters long, the limit is {limit}")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(field, f"must be true or false, not a {_kind(value)}")
    return value


def _int(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(field, f"must be a whole number, not a {_kind(value)}")
    if minimum is not None and value < minimum:
        raise InvalidSpec(field, f"must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise InvalidSpec(field, f"must be at most {maximum}, not {value}")
    return value


def parse_duration(value: Any, field: str) -> float:
    """``30``, ``1.5``, ``"90s"``, ``"5m"``, ``"2h"`` -> seconds (> 0)."""
    if isinstance(value, bool):
        raise InvalidSpec(field, "must be a duration like 30, '90s', '5m' or '2h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise InvalidSpec(field, f"must be a duration like 30, '90s', '5m' or '2h', not {value!r}")
    if seconds <= 0:
        raise InvalidSpec(field, "must be more than zero")
    return seconds


def parse_size(value: Any, field: str) -> int:
    """``536870912``, ``"512M"``, ``"2GiB"`` -> bytes."""
    if isinstance(value, bool):
        raise InvalidSpec(field, "must be a size like 512M or 2GiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        unit = (m.group(2) or "").lower().rstrip("b")
        size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    else:
        raise InvalidSpec(field, f"must be a size like 512M or 2GiB, not {value!r}")
    if size < 0:
        raise InvalidSpec(field, "must not be negative")
    return size


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
        out[name] = text
    return out


def parse_needs(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidSpec(field, f"must be a map with slots, labels or memory, not a {_kind(value)}")
    _unknown(value, NEEDS_FIELDS, field)
    needs: dict[str, Any] = {}
    if "slots" in value:
        needs["slots"] = _int(value["slots"], f"{field}.slots", minimum=1, maximum=4096)
    if "memory" in value:
        needs["memory"] = parse_size(value["memory"], f"{field}.memory")
    if "labels" in value:
        labels = value["labels"]
        if not isinstance(labels, dict):
            raise InvalidSpec(f"{field}.labels", f"must be a map of label: value, not a {_kind(labels)}")
        needs["labels"] = parse_labels(labels, f"{field}.labels")
    return needs


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
        out["timeout"] = parse_duration(data["timeout"], f"{where}timeout")
    if "priority" in data:
        out["priority"] = _int(data["priority"], f"{where}priority", minimum=-1000, maximum=1000)
    if "cwd" in data and data["cwd"] is not None:
        out["cwd"] = _str(data["cwd"], f"{where}cwd", limit=4096)
    if "needs" in data and data["needs"] is not None:
        out["needs"] = {**out.get("needs", {}), **parse_needs(data["needs"], f"{where}needs")}
    return out


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
        argv.append(text)
    if not argv[0].strip():
        raise InvalidSpec(f"{field}[0]", "the program name must not be empty")
    return argv


def validate_task(task: Any, where: str, inherited: dict[str, Any], number: int = 0) -> dict[str, Any]:
    """One task map -> normalised task spec (raises InvalidSpec naming ``where``)."""
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
    size = len(json.dumps(out))
    if size > MAX_TASK_SPEC_BYTES:
        raise InvalidSpec(where, f"is {size} bytes, the limit for one task is {MAX_TASK_SPEC_BYTES}")
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
    return {
        "name": _str(layer["name"], f"{where}.name") if layer.get("name") is not None else f"layer-{index}",
        "order": _int(layer.get("order", index), f"{where}.order", minimum=-10**9, maximum=10**9),
        "env": parse_env(layer.get("env"), f"{where}.env"),
        "paused": _bool(layer.get("paused", False), f"{where}.paused"),
        "on_error": on_error,
        "defaults": defaults,  # what tasks added later (add-task, spawn files) inherit
        "tasks": [validate_task(t, f"{where}.tasks[{i}]", defaults, i) for i, t in enumerate(tasks)],
    }


def validate_job(data: Any) -> dict[str, Any]:
    """A job map -> normalised job spec. Raises InvalidSpec naming the first bad field."""
    if not isinstance(data, dict):
        raise InvalidSpec("", f"a job must be a map with 'name' and 'layers', not a {_kind(data)}")
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
    defaults = _common(data, "", {})
    name = data.get("name")
    return {
        "name": _str(name, "name") if name is not None else "job",
        "description": _str(data.get("description", ""), "description", empty=True, limit=4000),
        "env": parse_env(data.get("env"), "env"),
        "paused": _bool(data.get("paused", False), "paused"),
        "layers": [validate_layer(layer, f"layers[{i}]", i, defaults) for i, layer in enumerate(layers)],
    }
