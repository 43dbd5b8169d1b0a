"""The CLI's own cost (issue 13): ``conductor --help`` and ``conductor show JOB`` of a big job, as
separate processes, for one or more versions of the code side by side.

A fresh etcd gets one job of ``--tasks`` ``true`` tasks (default 100,000) and a one-task job; no
conductor runs, so the big job stays RUNNING with every task queued (what ``show`` reads while a
job runs: counts and a page). Each version (``--tree NAME=GITREV``, any number; default the
working tree as it is) is copied out of git laid out as installed (``conductor/`` with ``cli/``
as ``conductor/cli``) and run as ``python -m conductor`` with that copy first on the path. Runs
are interleaved (each command, then each version, ``--runs`` rounds), so a change in the load
hits every version alike; the load average is printed before and after.

By default each copy is byte-compiled first, as an installed package is; ``--no-bytecode`` runs
them from source with PYTHONDONTWRITEBYTECODE=1, which is how a checkout runs when that variable
is set and no ``__pycache__`` exists (every start then compiles every module it imports).

    .venv/bin/python bench/cli_start.py --tree before=f284585 --tree after=HEAD --runs 9

One JSON object on stdout (medians, minima, maxima in seconds, of the wall time and of the CPU
time of each process); a table on stderr.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import NAMESPACE, Cluster, emit, run_main, say  # noqa: E402
from measure import true_job  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def snapshot(name: str, rev: str | None, into: Path, bytecode: bool) -> Path:
    """The code of ``rev`` (None: the working tree) laid out as installed, under ``into/name``."""
    dest = into / name
    (dest / "conductor").mkdir(parents=True)
    if rev is None:
        shutil.copytree(ROOT / "conductor", dest / "conductor", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "cli", dest / "conductor" / "cli", ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "conductor", "cli"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        shutil.move(str(dest / "cli"), str(dest / "conductor" / "cli"))
    if bytecode:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest)], check=True, stdout=subprocess.DEVNULL)
    found = subprocess.run([sys.executable, "-c", "import conductor.cli.main as m; print(m.__file__)"], cwd=dest,
                           env={**os.environ, "PYTHONPATH": str(dest)}, capture_output=True, text=True, check=True)
    if not found.stdout.startswith(str(dest)):  # an installed conductor would be timed instead
        raise RuntimeError(f"{name}: python imports the CLI from {found.stdout.strip()}, not from {dest}")
    return dest


def time_cli(tree: Path, args: list[str], endpoint: str, bytecode: bool) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, from wait4) of one ``python -m conductor ARGS`` from
    ``tree``; raises RuntimeError if it fails. Under load the wall time includes waiting for a
    core; the CPU time does not."""
    env = {**os.environ, "PYTHONPATH": str(tree), "CONDUCTOR_ETCD": endpoint, "CONDUCTOR_NAMESPACE": NAMESPACE}
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    t0 = time.perf_counter()
    # cwd: the tree, as ``python -m`` puts the working directory first on the path (a checkout's
    # own conductor/ would be run instead)
    proc = subprocess.Popen([sys.executable, "-m", "conductor", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=tree)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if proc.returncode != 0:
        raise RuntimeError(f"conductor {' '.join(args)} from {tree} failed ({proc.returncode})")
    return wall, usage.ru_utime + usage.ru_stime


def figures(times: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(times), 3), "min": round(min(times), 3), "max": round(max(times), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", action="append", default=[], metavar="NAME=GITREV",
                   help="a version to time (repeat); default: the working tree")
    p.add_argument("--tasks", type=int, default=100_000, help="tasks of the big job")
    p.add_argument("--runs", type=int, default=7, help="rounds (each command of each version once a round)")
    p.add_argument("--no-bytecode", action="store_true", help="run from source, compiling at every start")
    args = p.parse_args()
    bytecode = not args.no_bytecode
    trees = [t.partition("=")[::2] for t in args.tree] or [("here", "")]
    work = Path(tempfile.mkdtemp(prefix="conductor-cli-start-"))
    try:
        paths = {name: snapshot(name, rev or None, work, bytecode) for name, rev in trees}
        with Cluster() as cl:
            client = cl.client()
            small = client.post(true_job("small", [1]))
            t0 = time.perf_counter()
            big = client.post(true_job("big", [args.tasks]))
            say(f"posted {args.tasks} tasks in {time.perf_counter() - t0:.1f} s (no conductor runs: they stay queued)")
            t0 = time.perf_counter()
            client.show(big, tasks=20)
            client_show = time.perf_counter() - t0
            commands = {"--help": ["--help"], "show JOB": ["show", big], "show JOB --json": ["show", big, "--json"],
                        "show SMALL": ["show", small]}
            times: dict[str, dict[str, list[float]]] = {c: {n: [] for n in paths} for c in commands}
            cpu: dict[str, dict[str, list[float]]] = {c: {n: [] for n in paths} for c in commands}
            load_before = os.getloadavg()
            for _ in range(args.runs):
                for command, argv in commands.items():
                    for name, tree in paths.items():
                        wall, used = time_cli(tree, argv, cl.endpoint, bytecode)
                        times[command][name].append(wall)
                        cpu[command][name].append(used)
            load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {
        "tasks": args.tasks, "runs": args.runs, "bytecode": bytecode, "trees": dict(trees),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
        "client_show_s": round(client_show, 4),
        "times": {c: {n: figures(t) for n, t in by.items()} for c, by in times.items()},
        "cpu": {c: {n: figures(t) for n, t in by.items()} for c, by in cpu.items()}}
    say(f"load average {result['load_before']} before, {result['load_after']} after; "
        f"Client.show(JOB, tasks=20) in this process: {client_show:.3f} s")
    say("wall s, median (min-max) | CPU s, median")
    for command, by in result["times"].items():
        say(f"{command:16s} " + "   ".join(f"{n}: {f['median']:.3f} ({f['min']:.3f}-{f['max']:.3f}) | "
                                          f"{result['cpu'][command][n]['median']:.3f}" for n, f in by.items()))
    emit(result)


if __name__ == "__main__":
    run_main(main)
