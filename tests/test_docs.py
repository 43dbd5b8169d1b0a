"""The docs' tables of keys and transitions must match the code, in both directions, and their
examples must run.

The table tests need no etcd: they read docs/keyspace.md and docs/states.md and compare their
tables with ``conductor.keys.LAYOUT`` and the transition dicts of ``conductor.states``. The
keyspace's decoding example runs against a real etcd with a real job in it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conductor import keys, states

DOCS = Path(__file__).resolve().parent.parent / "docs"

KEYS_HEADER = ["name", "key", "lease", "holds"]
TRANSITIONS_HEADER = ["from", "to", "when"]
SECTIONS = {
    "## Task transitions": states.TASK_TRANSITIONS,
    "## Layer transitions": states.LAYER_TRANSITIONS,
    "## Job transitions": states.JOB_TRANSITIONS,
}


def _cells(line: str) -> list[str]:
    """The cells of one markdown table row (``|`` inside backticks does not split)."""
    body = line.strip()
    assert body.startswith("|") and body.endswith("|"), f"not a table row: {line!r}"
    cells, current, in_code = [], "", False
    for ch in body[1:-1]:
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += ch
    cells.append(current.strip())
    return cells


def _is_separator(cells: list[str]) -> bool:
    return all(re.fullmatch(r":?-{3,}:?", c) for c in cells)


def _tables(text: str, header: list[str]) -> list[tuple[int, list[list[str]]]]:
    """Every table whose header row is exactly ``header``: (line index of the header, body rows)."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if not line.strip().startswith("|") or _cells(line) != header:
            continue
        assert i + 1 < len(lines) and _is_separator(_cells(lines[i + 1])), f"table at line {i + 1} has no separator"
        rows = []
        for row in lines[i + 2:]:
            if not row.strip().startswith("|"):
                break
            cells = _cells(row)
            assert len(cells) == len(header), f"row {row!r} has {len(cells)} cells, expected {len(header)}"
            rows.append(cells)
        found.append((i, rows))
    return found


def _code(cell: str) -> str:
    """The text of a cell that must be exactly one backticked span."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    assert match, f"expected a single `code` span, got {cell!r}"
    return match.group(1)


# ---- keyspace ---------------------------------------------------------------------------------


def _keyspace_rows() -> list[list[str]]:
    tables = _tables((DOCS / "keyspace.md").read_text(encoding="utf-8"), KEYS_HEADER)
    assert len(tables) == 1, f"docs/keyspace.md must hold exactly one | name | key | lease | holds | table, found {len(tables)}"
    return tables[0][1]


def test_keyspace_table_matches_layout() -> None:
    documented: dict[str, tuple[str, bool]] = {}
    for name_cell, key_cell, lease_cell, holds in _keyspace_rows():
        name = _code(name_cell)
        assert name not in documented, f"docs/keyspace.md lists {name!r} twice"
        assert lease_cell in ("yes", "no"), f"lease of {name!r} must be yes or no, not {lease_cell!r}"
        assert holds, f"holds of {name!r} is empty"
        documented[name] = (_code(key_cell), lease_cell == "yes")
    in_code = {name: (pattern, lease) for name, (pattern, lease, _) in keys.LAYOUT.items()}
    missing = sorted(set(in_code) - set(documented))
    extra = sorted(set(documented) - set(in_code))
    assert not missing, f"keys in conductor.keys.LAYOUT but not in docs/keyspace.md: {missing}"
    assert not extra, f"keys in docs/keyspace.md but not in conductor.keys.LAYOUT: {extra}"
    for name, expected in in_code.items():
        assert documented[name] == expected, f"{name}: docs say {documented[name]}, LAYOUT says {expected}"


# ---- states -----------------------------------------------------------------------------------


def _section_table(text: str, heading: str) -> list[list[str]]:
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == heading]
    assert len(starts) == 1, f"docs/states.md must have exactly one heading {heading!r}"
    start = starts[0]
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tables = _tables("\n".join(lines[start + 1:end]), TRANSITIONS_HEADER)
    assert len(tables) == 1, f"{heading} must hold exactly one | from | to | when | table, found {len(tables)}"
    return tables[0][1]


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_transition_table_matches_code(heading: str) -> None:
    rows = _section_table((DOCS / "states.md").read_text(encoding="utf-8"), heading)
    documented: set[tuple[str, str]] = set()
    for from_cell, to_cell, when in rows:
        pair = (_code(from_cell), _code(to_cell))
        assert pair not in documented, f"{heading}: {pair} is listed twice"
        assert when, f"{heading}: {pair} has no 'when'"
        documented.add(pair)
    in_code = set(SECTIONS[heading])
    missing = sorted(in_code - documented)
    extra = sorted(documented - in_code)
    assert not missing, f"{heading}: moves in conductor/states.py but not in docs/states.md: {missing}"
    assert not extra, f"{heading}: moves in docs/states.md but not in conductor/states.py: {extra}"


def test_transition_tables_are_only_under_their_headings() -> None:
    text = (DOCS / "states.md").read_text(encoding="utf-8")
    assert len(_tables(text, TRANSITIONS_HEADER)) == len(SECTIONS)


# ---- the parser itself --------------------------------------------------------------------------


def test_parser_catches_a_change_on_either_side() -> None:
    doc = "\n".join(["## Task transitions", "", "| from | to | when |", "|---|---|---|",
                     "| `PENDING` | `QUEUED` | x |", "", "## Next", "| from | to | when |", "|---|---|---|",
                     "| `A` | `B` | y |"])
    rows = _section_table(doc, "## Task transitions")
    assert [(_code(f), _code(t)) for f, t, _ in rows] == [("PENDING", "QUEUED")]
    assert _cells("| `a|b` | c |") == ["`a|b`", "c"]
    with pytest.raises(AssertionError):
        _code("PENDING")


def test_readme_job_example_is_examples_hello_yaml():
    """The README shows the example people run (``conductor post examples/hello.yaml``), exactly."""
    root = DOCS.parent
    readme = (root / "README.md").read_text()
    match = re.search(r"^```yaml\n(.*?)^```$", readme, re.S | re.M)
    assert match, "README.md has no yaml block"
    assert match.group(1) == (root / "examples" / "hello.yaml").read_text()


def test_keyspace_decoding_example_runs(client, shared_etcd):
    """The ten-line script in docs/keyspace.md reads a real job's state with etcdctl and msgpack."""
    text = (DOCS / "keyspace.md").read_text()
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M) if "jobstates.py" in b]
    assert len(blocks) == 1, "docs/keyspace.md must hold the jobstates.py example once"
    assert len([line for line in blocks[0].splitlines() if line.strip()]) <= 12, "the example stays short"
    job = client.post({"name": "decoded", "paused": True, "layers": [{"tasks": [{"cmd": ["true"]}]}]})
    env = {**os.environ, "NS": client.keys.namespace, "ETCDCTL_ENDPOINTS": shared_etcd.endpoint, "ETCDCTL_API": "3"}
    run = subprocess.run([sys.executable, "-c", blocks[0]], capture_output=True, text=True, env=env, timeout=30)
    assert run.returncode == 0, run.stderr
    stored = client.job(job)
    assert run.stdout.splitlines() == [f"{job} {stored['state']} {stored['records'][-1]['reason']}"]


# ---- who may read and write (docs/keyspace.md, conductor.roles) ---------------------------------

ROLES_HEADER = ["kind", "user", "node", "admin"]


def documented_user_access() -> dict[str, str]:
    """The roles table of docs/keyspace.md as ``conductor.roles.USER_ACCESS`` spells it."""
    tables = _tables((DOCS / "keyspace.md").read_text(encoding="utf-8"), ROLES_HEADER)
    assert len(tables) == 1, "docs/keyspace.md must hold exactly one | kind | user | node | admin | table"
    spelled = {"read, write": "rw", "read": "r", "none": ""}
    out = {}
    for kind, user, node, admin in tables[0][1]:
        assert (node, admin) == ("read, write", "read, write"), f"{kind}: nodes and admins read and write everything"
        assert user in spelled, f"{kind}: user access must be one of {sorted(spelled)}, not {user!r}"
        out[_code(kind)] = spelled[user]
    return out


def test_roles_table_matches_code() -> None:
    from conductor import roles

    documented = documented_user_access()
    assert set(documented) == set(keys.LAYOUT), "the roles table lists every key kind, once"
    assert documented == {k: roles.USER_ACCESS.get(k, "") for k in keys.LAYOUT}
