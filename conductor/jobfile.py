"""Reading job files safely: YAML or JSON text -> plain data, hostile input refused.

Everything here raises :class:`InvalidSpec` (never a Python error) and nothing touches etcd. What
is refused, and why (the caps are constants in :mod:`conductor.spec`, see ``docs/jobs.md``):

* nesting deeper than ``MAX_DEPTH`` (the parsers recurse; 5,000 levels would be a RecursionError);
* a key given twice in one map or object (the second would silently win), naming key and line;
* YAML aliases that expand to far more nodes than were written ("billion laughs");
* integers with more than ``MAX_DIGITS`` digits, and numbers that are not finite (NaN, infinity);
* strings that cannot be encoded as UTF-8 (unpaired UTF-16 surrogates from ``\\ud800`` in JSON).
"""
from __future__ import annotations

import json
import json.decoder
import json.scanner
import math
import re
from typing import Any, Iterator

import yaml

from .errors import InvalidSpec
from .limits import ALIAS_FACTOR, MAX_ALIAS_NODES, MAX_DEPTH, MAX_DIGITS

_BIGGEST = 10 ** MAX_DIGITS


class _Int(int):
    """An int that remembers how it was written (``010`` stays ``010`` in an argv)."""

    source: str


class _Float(float):
    source: str


class LongNumber(str):
    """A JSON integer of more than MAX_DIGITS digits, kept as text so the check can name its field."""


class _Problem(Exception):
    """A problem found while parsing, at a line (turned into InvalidSpec naming the file)."""

    def __init__(self, line: int | None, reason: str):
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _Loader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's scalars: only true/false are booleans (not yes/no/on/off),
    no sexagesimal or 0-prefixed octal numbers, and numbers keep their source text. A key given
    twice in one map is refused (PyYAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys merged in from an alias may be overridden: that is what << is for
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base constructor refuses it
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _Problem(line, f"key {key!r} appears twice in one map (first on line {first})")
            seen[key] = line
        return super().construct_mapping(node, deep)


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
    if len(text.lstrip("+-")) > MAX_DIGITS:  # int() of 4,301 digits raises; none of ours needs 65
        raise _Problem(node.start_mark.line + 1, f"a number of {len(text)} digits is too long "
                                                 f"(at most {MAX_DIGITS}; quote it to make it text)")
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


def parse(text: str, where: str) -> Any:
    """YAML or JSON text -> the data it holds, checked (see the module docstring).

    Raises InvalidSpec: ``file`` with ``where`` and the line for what fails while parsing, else
    the field path (``layers[0].tasks[2].env.X``) of the offending value."""
    try:
        data = _parse_json(text) if text.lstrip().startswith(("{", "[")) else _parse_yaml(text)
    except RecursionError:
        raise InvalidSpec("file", f"{where}: nested more than {MAX_DEPTH} levels") from None
    except _Problem as exc:
        at = f"line {exc.line}: " if exc.line else ""
        raise InvalidSpec("file", f"{where}: {at}{exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise InvalidSpec("file", f"{where}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidSpec("file", f"{where}: not valid YAML: {at}{_one_line(problem)}") from None
    except ValueError as exc:  # a number Python will not convert, say: never a traceback
        raise InvalidSpec("file", f"{where}: {_one_line(str(exc))}") from None
    check_values(data)
    return data


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---- JSON ------------------------------------------------------------------------------------

class _Duplicate(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _json_int(text: str) -> Any:
    return LongNumber(text) if len(text.lstrip("-")) > MAX_DIGITS else int(text)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_int=_json_int)
    except _Duplicate as dup:
        line = _duplicate_line(text, dup.key)
        raise _Problem(line, f"key {dup.key!r} appears twice in one object") from None


def _duplicate_line(text: str, key: str) -> int | None:
    """The line of a key's second occurrence in one JSON object. Only on the error path: parses
    again with the pure-Python scanner, which lets us see where each object starts and ends."""
    spans: list[tuple[int, int]] = []  # objects parsed so far (children before their parent)
    found: list[int] = []
    pattern = re.compile(r'(?<!\\)' + re.escape(json.dumps(key)) + r'\s*:')
    decoder = json.JSONDecoder(object_pairs_hook=list, parse_int=_json_int)

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[Any, int]:
        s, start = s_and_end
        pairs, end = json.decoder.JSONObject(s_and_end, *args)  # type: ignore[attr-defined]
        if not found and [k for k, _ in pairs].count(key) > 1:
            found.append(_second(s, pattern, start, end, [(a, b) for a, b in spans if a >= start and b <= end]))
        spans.append((start, end))
        return pairs, end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        decoder.decode(text)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None


def _second(s: str, pattern: re.Pattern[str], start: int, end: int, children: list[tuple[int, int]]) -> int:
    """The line of the second match of ``pattern`` in s[start:end] outside the child objects
    (the object's own line when it cannot be found: a key written with escapes, say)."""
    hits = [m.start() for m in pattern.finditer(s, start, end) if not any(a <= m.start() < b for a, b in children)]
    return s.count("\n", 0, hits[1] if len(hits) > 1 else start) + 1


# ---- YAML ------------------------------------------------------------------------------------

def _parse_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse aliases that expand to more than MAX_ALIAS_NODES nodes and more than ALIAS_FACTOR
    times the nodes written. Counts each node once per place it appears, memoised per node, so
    the count itself costs only the nodes written; a node that contains itself is refused."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in _children(node))
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_:
            raise _Problem(node.start_mark.line + 1, "an alias refers to a node that contains it")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    expanded, written = sizes[id(root)], len(sizes)
    if expanded > MAX_ALIAS_NODES and expanded > ALIAS_FACTOR * written:
        raise _Problem(None, f"aliases expand {written} nodes written to {expanded} nodes; the limit is "
                             f"{MAX_ALIAS_NODES} (or {ALIAS_FACTOR} times the nodes written)")


# ---- the data, whichever format it came in ---------------------------------------------------

def check_values(data: Any, path: str = "") -> None:
    """Refuse, naming its field, any value nested too deep, any number that is not finite or has
    too many digits, and any string (key or value) that is not valid UTF-8 text. Iterative, so
    a deep or self-referencing structure cannot exhaust Python's stack."""
    for value, field, depth in _walk(data, path):
        if depth > MAX_DEPTH:  # name where it starts: the full path would be as deep as the problem
            start = field[:field.index("[")] if "[" in field[:40] else field[:40]
            raise InvalidSpec(start or "file", f"is nested more than {MAX_DEPTH} levels")
        _check_scalar(value, field)


def _walk(data: Any, path: str) -> Iterator[tuple[Any, str, int]]:
    stack: list[tuple[Any, str, int]] = [(data, path, 0)]
    while stack:
        value, field, depth = stack.pop()
        yield value, field, depth
        if depth > MAX_DEPTH:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                name = f"{field}.{key}" if field else str(key)
                if isinstance(key, str):
                    _check_scalar(key, name)
                stack.append((item, name, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{field}[{i}]", depth + 1) for i, item in enumerate(value))


def _check_scalar(value: Any, field: str) -> None:
    if isinstance(value, str):
        _check_str(value, field)
    elif isinstance(value, float):
        _check_float(value, field)
    elif isinstance(value, int) and not isinstance(value, bool):
        _check_int(value, field)


def _check_str(value: str, field: str) -> None:
    if isinstance(value, LongNumber):
        raise InvalidSpec(field, f"is a number of {len(value)} digits, too long "
                                 f"(at most {MAX_DIGITS}; quote it to make it text)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidSpec(field, f"is not valid UTF-8 text (it holds {value[exc.start]!r} at character "
                                 f"{exc.start}, an unpaired UTF-16 surrogate)") from None


def _check_float(value: float, field: str) -> None:
    if not math.isfinite(value):
        raise InvalidSpec(field, f"is not a finite number ({value})")


def _check_int(value: int, field: str) -> None:
    if abs(value) >= _BIGGEST:
        raise InvalidSpec(field, f"is a number of more than {MAX_DIGITS} digits, too long")

