"""The command line starts cheap: what it imports, checked by module, never by timing.

``conductor show JOB`` of a 100,000-task job should answer in half a second (issue 13), and most
of that used to be the CLI's start: importing libraries the command never uses. These tests run
fresh interpreters (the imports of this test process prove nothing) and list ``sys.modules``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conductor.client import Client

# Libraries only some commands need: containers (docker), the web UI and /metrics (starlette,
# uvicorn, jinja2, prometheus_client), laptop clusters, TLS and sealed secrets (cryptography),
# schedules (croniter), nodes (psutil), job files (yaml).
HEAVY = ("docker", "starlette", "uvicorn", "jinja2", "prometheus_client", "cryptography", "croniter", "psutil", "yaml")
# Command modules other than main (which registers run, post, show, nodes, check; web: serve).
OTHER_COMMAND_MODULES = ("automation", "control", "cluster", "events", "users", "flow")


def _modules_after(code: str, tmp_path: Path) -> set[str]:
    """The modules a fresh interpreter holds once ``code`` ran (and at exit, if it exits)."""
    out = tmp_path / "modules.json"
    prelude = ("import atexit, json, sys\n"
               f"atexit.register(lambda: open({str(out)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n")
    run = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=60)
    assert out.exists(), f"the interpreter did not get to exit: {run.stderr[-2000:]}"
    return set(json.loads(out.read_text()))


def _loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(p for p in packages if p in modules or any(m.startswith(p + ".") for m in modules))


def test_importing_the_cli_loads_no_library_a_command_may_not_need(tmp_path: Path) -> None:
    modules = _modules_after("import conductor.cli.main", tmp_path)
    assert "conductor.cli.main" in modules
    assert _loaded(modules, HEAVY) == []
    assert _loaded(modules, ("grpc", "google.protobuf")) == []  # etcd's client: only once a command connects
    assert [m for m in OTHER_COMMAND_MODULES if f"conductor.cli.{m}" in modules] == []


def test_the_client_loads_no_library_a_read_does_not_need(tmp_path: Path) -> None:
    modules = _modules_after("from conductor.client import Client", tmp_path)
    assert "grpc" in modules  # what every command that reaches etcd needs
    assert _loaded(modules, HEAVY) == []


@pytest.mark.parametrize("json_output", [False, True], ids=["table", "json"])
def test_show_of_a_job_reads_it_with_neither_the_other_commands_nor_their_libraries(
        client: Client, shared_etcd, namespace: str, tmp_path: Path, json_output: bool) -> None:
    job = client.post({"name": "shown", "layers": [{"tasks": [{"cmd": ["true"]} for _ in range(3)]}]})
    show = tmp_path / "show.txt"
    argv = ["conductor", "show", job, "--etcd", shared_etcd.endpoint, "--namespace", namespace]
    code = ("import sys\n"
            f"sys.argv = {argv + ['--json'] * json_output!r}\n"
            f"sys.stdout = open({str(show)!r}, 'w')\n"
            "from conductor.cli.main import main\n"
            "main()\n")
    modules = _modules_after(code, tmp_path)
    assert job in show.read_text()  # it did show the job, through etcd
    assert "grpc" in modules
    assert _loaded(modules, HEAVY) == []
    assert [m for m in OTHER_COMMAND_MODULES if f"conductor.cli.{m}" in modules] == []
    assert _loaded(modules, ("rich",)) == ([] if json_output else ["rich"])  # JSON needs no console


def _registered(modules: str) -> list[str]:
    """Names registered on the app once these command modules (comma-separated) are imported."""
    code = ("import importlib, json\n"
            "from typer.main import get_command_name\n"
            "from conductor.cli.common import app\n"
            f"for m in {modules!r}.split(','):\n"
            "    importlib.import_module('conductor.cli.' + m)\n"
            "names = [c.name or get_command_name(c.callback.__name__) for c in app.registered_commands]\n"
            "print(json.dumps(names + [g.name for g in app.registered_groups]))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(run.stdout)


def test_the_table_of_command_modules_says_what_each_module_registers() -> None:
    from conductor.cli.main import COMMAND_MODULES, OWN_COMMANDS

    assert tuple(COMMAND_MODULES) == OTHER_COMMAND_MODULES
    own = _registered("main")
    assert sorted(own) == sorted(OWN_COMMANDS)
    for module, names in COMMAND_MODULES.items():
        added = [n for n in _registered(f"main,{module}") if n not in own]
        assert sorted(added) == sorted(names), module
    every = _registered("main," + ",".join(COMMAND_MODULES))
    assert len(every) == len(set(every)) == len(OWN_COMMANDS) + sum(len(n) for n in COMMAND_MODULES.values())


def _after_load(argv: list[str], tmp_path: Path) -> list[str]:
    modules = _modules_after(f"from conductor.cli.main import load_commands\nload_commands({argv!r})", tmp_path)
    return [m for m in OTHER_COMMAND_MODULES if f"conductor.cli.{m}" in modules]


def test_a_command_line_loads_the_module_of_its_command_and_help_loads_them_all(tmp_path: Path) -> None:
    assert _after_load(["show", "x", "--json"], tmp_path) == []
    assert _after_load(["pause", "x"], tmp_path) == ["control"]
    assert _after_load(["template", "list"], tmp_path) == ["automation"]
    assert _after_load(["--help"], tmp_path) == list(OTHER_COMMAND_MODULES)
    assert _after_load([], tmp_path) == list(OTHER_COMMAND_MODULES)
    assert _after_load(["shwo"], tmp_path) == list(OTHER_COMMAND_MODULES)  # click suggests among them all


def test_help_lists_every_command(tmp_path: Path) -> None:
    from conductor.cli.main import COMMAND_MODULES, OWN_COMMANDS

    run = subprocess.run([sys.executable, "-m", "conductor", "--help"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 0, run.stderr
    listed = {line.split()[1] for line in run.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    assert set(OWN_COMMANDS) | {n for names in COMMAND_MODULES.values() for n in names} <= listed
