"""Templates: job files with declared inputs, and jobs made from them.

A job file may declare ``inputs`` and then use ``{name}`` inside argv elements and env values
(``{{`` and ``}}`` for literal braces, so a shell's ``${HOME}`` is written ``${{HOME}}`` there); in a
file without inputs braces are plain text. Substitution happens inside one argv element at a time, never through a
shell, so a value cannot add or split arguments. Everything is checked before anything is written:
an undeclared placeholder, a missing required input and an unknown input are refused, naming it.

Secret inputs are never written into a task's spec: their placeholders stay as written, the values
go to one key the views never read (``users/<user>/secrets/<job>``), and the node that runs the task
fills them in at the last moment and masks them in the log tail and result it stores.
"""
from __future__ import annotations

import re
from typing import Any, Collection

from . import loopguard, spec
from .errors import InvalidSpec

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|\{|\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MESSAGE = re.compile(r"^[A-Za-z0-9_.:/\-]+$")
MASK = "****"
TEMPLATE_FIELDS = {"inputs", "triggers", "after", "on_success", "on_failure", "loops", "max_chain", "max_rate"}


def parse_inputs(value: Any, field: str = "inputs") -> dict[str, dict[str, Any]]:
    """``inputs`` as a list of {name, description, required, default, secret} or a map of them."""
    out: dict[str, dict[str, Any]] = {}
    for name, settings in _input_items(value, field):
        where = f"{field}.{name}"
        if not _NAME.match(name):
            raise InvalidSpec(where, "input names are letters, digits and _, not starting with a digit")
        if name in out:
            raise InvalidSpec(where, "is declared twice")
        out[name] = _input(settings, where)
    return out


def _input_items(value: Any, field: str) -> list[tuple[str, Any]]:
    """(name, settings) of each declared input, in order."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [(str(k), v if isinstance(v, dict) else {"default": v}) for k, v in value.items()]
    if not isinstance(value, list):
        raise InvalidSpec(field, "must be a list of inputs (or a map of name: settings)")
    items: list[tuple[str, Any]] = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            items.append((item, {}))
        elif isinstance(item, dict) and "name" in item:
            items.append((str(item["name"]), {k: v for k, v in item.items() if k != "name"}))
        else:
            raise InvalidSpec(f"{field}[{i}]", "must be a name or a map with 'name'")
    return items


def _input(settings: Any, where: str) -> dict[str, Any]:
    unknown = set(settings) - {"description", "required", "default", "secret"}
    if unknown:
        raise InvalidSpec(f"{where}.{sorted(unknown)[0]}", "unknown field (known: default, description, "
                                                            "required, secret)")
    entry = {"description": str(settings.get("description", "")),
             "secret": spec._bool(settings.get("secret", False), f"{where}.secret")}
    if "default" in settings and settings["default"] is not None:
        default = settings["default"]
        if not isinstance(default, (str, int, float)):
            raise InvalidSpec(f"{where}.default", "must be a string or a number")
        entry["default"] = spec._scalar_text(default)
    required = settings.get("required", "default" not in entry)
    entry["required"] = spec._bool(required, f"{where}.required")
    return entry


def parse_messages(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidSpec(field, "must be a message name or a list of them")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not _MESSAGE.match(item):
            raise InvalidSpec(f"{field}[{i}]", "message names are letters, digits and . _ - : /")
        out.append(item)
    return out


def placeholders(text: str) -> list[str]:
    return [m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1)]


def substitute(text: str, values: dict[str, str], field: str, keep: Collection[str] = ()) -> str:
    """Fill ``{name}`` in one string; names in ``keep`` (secrets) stay as written."""
    def fill(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{{" if keep else "{"
        if token == "}}":
            return "}}" if keep else "}"
        name = m.group(1)
        if name is None:
            raise InvalidSpec(field, f"has a lone {token!r}; write {token * 2} for a literal brace")
        if name in keep:
            return token
        if name not in values:
            raise InvalidSpec(field, f"uses {{{name}}}, which is not a declared input")
        # in a string finished at run time, a value's own braces must stay literal then
        return values[name].replace("{", "{{").replace("}", "}}") if keep else values[name]
    return _PLACEHOLDER.sub(fill, text)


def _walk(job: dict[str, Any]) -> list[tuple[str, list[str] | dict[str, str], Any]]:
    """(field path, container, key) of every string that may hold placeholders."""
    spots: list[tuple[str, Any, Any]] = []
    for name in (job.get("env") or {}):
        spots.append((f"env.{name}", job["env"], name))
    for field in ("layers", "compensate"):  # compensate: compensation layers (compensation.py)
        layers = job.get(field)
        for li, layer in enumerate(layers if isinstance(layers, list) else []):
            if isinstance(layer, dict):
                spots += _walk_layer(layer, f"{field}[{li}]")
    return spots


def _walk_layer(layer: dict[str, Any], at: str) -> list[tuple[str, Any, Any]]:
    spots: list[tuple[str, Any, Any]] = [(f"{at}.env.{name}", layer["env"], name) for name in (layer.get("env") or {})]
    for ti, task in enumerate(layer.get("tasks") or []):
        if not isinstance(task, dict):
            continue
        where = f"{at}.tasks[{ti}]"
        cmd = task.get("cmd")
        if isinstance(cmd, list):
            spots += [(f"{where}.cmd[{i}]", cmd, i) for i in range(len(cmd))]
        elif isinstance(cmd, str):
            spots.append((f"{where}.cmd", task, "cmd"))
        for name in (task.get("env") or {}):
            spots.append((f"{where}.env.{name}", task["env"], name))
    return spots


def split(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job file's template part (inputs, triggers...) and its job part, both validated."""
    meta = {
        "inputs": parse_inputs(data.get("inputs")),
        "triggers": parse_messages(data.get("triggers"), "triggers"),
        "after": parse_messages(data.get("after"), "after"),
        "on_success": parse_messages(data.get("on_success"), "on_success"),
        "on_failure": parse_messages(data.get("on_failure"), "on_failure"),
        **loopguard.parse_meta(data),
    }
    job = {k: v for k, v in data.items() if k not in TEMPLATE_FIELDS}
    if not meta["inputs"]:  # a plain job file: braces are just braces
        return meta, job
    for where, container, key in _walk(job):  # every placeholder must be declared
        value = container[key]
        if isinstance(value, str):
            for name in placeholders(value):
                if name not in meta["inputs"]:
                    raise InvalidSpec(where, f"uses {{{name}}}, which is not a declared input")
            substitute(value, {n: "" for n in meta["inputs"]}, where)  # lone braces
    for li, layer in enumerate(job.get("layers") or []):
        if isinstance(layer, dict):
            for key in ("on_success", "on_failure"):
                if key in layer:
                    parse_messages(layer[key], f"layers[{li}].{key}")
    return meta, job


def resolve(meta: dict[str, Any], params: dict[str, str], where: str = "") -> tuple[dict[str, str], dict[str, str]]:
    """(public values, secret values) for a set of parameters; refuses unknown and missing ones."""
    inputs = meta["inputs"]
    for name in params:
        if name not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            raise InvalidSpec(f"{where}-p {name}", f"is not an input of this template (inputs: {known})")
    from .jobfile import check_values  # secrets are stored as given: check them here, not in the job

    for name, value in params.items():
        check_values(str(value), f"{where}-p {name}")
    values: dict[str, str] = {}
    for name, settings in inputs.items():
        if name in params:
            values[name] = str(params[name])
        elif "default" in settings:
            values[name] = settings["default"]
        elif settings["required"]:
            raise InvalidSpec(f"{where}inputs.{name}", "is required and was not given (-p " + name + "=...)")
        else:
            values[name] = ""
    secret = {n: v for n, v in values.items() if inputs[n]["secret"]}
    public = {n: v for n, v in values.items() if n not in secret}
    return public, secret


def instantiate(data: dict[str, Any], params: dict[str, str],
                where: str = "") -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """A job file (with inputs) and parameters -> (validated job spec, template meta, secrets).

    Secret placeholders stay in the spec; the spec's tasks name the secrets they use."""
    import copy

    meta, job = split(data)
    public, secret = resolve(meta, params, where)
    job = copy.deepcopy(job)
    for field, container, key in (_walk(job) if meta["inputs"] else []):
        text = container[key]
        if isinstance(text, str):  # a string with a secret in it is finished at run time, escapes and all
            deferred = set(secret) if set(placeholders(text)) & set(secret) else set()
            container[key] = substitute(text, public, field, keep=deferred)
    normalised = spec.validate_job(job)
    for li, layer in enumerate(data.get("layers") or []):
        if isinstance(layer, dict):
            normalised["layers"][li]["on_success"] = parse_messages(layer.get("on_success"), f"layers[{li}].on_success")
            normalised["layers"][li]["on_failure"] = parse_messages(layer.get("on_failure"), f"layers[{li}].on_failure")
    for layer in normalised["layers"]:
        for task in layer["tasks"]:
            used = {n for text in [*task["cmd"], *task["env"].values()] for n in placeholders(text) if n in secret}
            if used:
                task["secrets"] = sorted(used)
    return normalised, meta, secret


def masked(params: dict[str, str], meta: dict[str, Any]) -> dict[str, str]:
    return {k: (MASK if meta["inputs"].get(k, {}).get("secret") else v) for k, v in params.items()}


def recorded_inputs(meta: dict[str, Any], params: dict[str, str]) -> dict[str, str]:
    """The inputs a job records in its source: every resolved value, secrets as ****."""
    public, secret = resolve(meta, params)
    return masked({**public, **secret}, meta)


def fill_secrets(argv: list[str], env: dict[str, str], secrets: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """argv and env with secret placeholders filled in (at run time only). Only strings that hold
    a secret's placeholder were left unfinished at posting, so only those are filled."""
    def fill(text: str, field: str) -> str:
        return substitute(text, secrets, field) if set(secrets) & set(placeholders(text)) else text

    return [fill(a, "cmd") for a in argv], {k: fill(v, f"env.{k}") for k, v in env.items()}


def mask(data: bytes, secrets: dict[str, str]) -> bytes:
    """``data`` with every secret value replaced by ****."""
    for value in secrets.values():
        if value:
            data = data.replace(value.encode(), MASK.encode())
    return data
