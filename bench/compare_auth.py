#!/usr/bin/env python3
"""Issue 10's check: throughput and latency before it, and now with etcd's auth off and on, interleaved.

Three configurations are measured in one run, taking turns so that the machine's changing load
falls on all of them alike:

- ``before``: another checkout (default ``/tmp/bench-old``, commit eab04f1, main before issue 10),
  its own bench scripts run with its own interpreter (``--old-python``, default its ``.venv``);
- ``auth_off``: this tree's scripts as they are;
- ``auth_on``: this tree's scripts with ``--auth`` (etcd's auth on, the conductors as the node
  account, the client as an ordinary user).

Each round runs ``throughput.py`` once per configuration, then ``latency.py`` once per configuration;
the order of the configurations rotates from round to round (before, off, on; then off, on, before;
...). Every run is a fresh etcd and fresh conductors. Prints one JSON line per configuration: the
median over the rounds of tasks/s (and of etcd's CPU per task in those runs, where auth costs) and
of the latency runs' medians and p99s, every run's figure, and the ratios to ``before``
(throughput: higher is better; latency: lower is better). Progress and the load average go to
stderr. With the defaults (5 rounds, 2000 tasks, 200 jobs) a comparison takes about 5 minutes on
the 2-core development machine at a load average of 6 to 10. Set up the old checkout once with::

    git -C /path/to/main worktree add --detach /tmp/bench-old eab04f1
    (cd /tmp/bench-old && python3 -m venv .venv && .venv/bin/pip install -e . psutil)
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIGS = ("before", "auth_off", "auth_on")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-tree", default="/tmp/bench-old", help="checkout of the code to compare with")
    p.add_argument("--old-python", help="its interpreter (default: OLD_TREE/.venv/bin/python)")
    p.add_argument("--python", default=sys.executable, help="this tree's interpreter (default: this one)")
    p.add_argument("--rounds", type=int, default=5, help="runs of each benchmark per configuration")
    p.add_argument("--tasks", type=int, default=2000, help="tasks of each throughput run")
    p.add_argument("--jobs", type=int, default=200, help="jobs of each latency run")
    p.add_argument("--log", help="append every run's stderr to this file (default: dropped unless it fails)")
    return p.parse_args()


def commit_of(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "") if out.returncode == 0 else "?"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def run_bench(python: str, bench_dir: Path, bench: str, extra: list[str], log: str | None) -> dict[str, Any]:
    """One benchmark run in a fresh cluster; its JSON result. Raises SystemExit when it fails."""
    argv = [python, str(bench_dir / f"{bench}.py"), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if log:
        with open(log, "a") as out:
            out.write(f"==== {' '.join(argv)} (exit {done.returncode})\n{done.stderr}")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise SystemExit(f"{' '.join(argv)} failed (exit {done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def setups(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    old = Path(args.old_tree)
    old_python = args.old_python or str(old / ".venv" / "bin" / "python")
    for path in (old / "bench" / "throughput.py", Path(old_python)):
        if not path.exists():
            raise SystemExit(f"--old-tree/--old-python: {path} does not exist (see this script's help)")
    new = {"python": args.python, "dir": HERE, "commit": commit_of(HERE.parent)}
    return {"before": {"python": old_python, "dir": old / "bench", "commit": commit_of(old), "auth": []},
            "auth_off": {**new, "auth": []}, "auth_on": {**new, "auth": ["--auth"]}}


def measure(args: argparse.Namespace, conf: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Every run's figures (:func:`pick`) by configuration, in round order."""
    sizes = {"throughput": ["--tasks", str(args.tasks)], "latency": ["--jobs", str(args.jobs)]}
    got: dict[str, list[dict[str, float]]] = {c: [{} for _ in range(args.rounds)] for c in CONFIGS}
    for r in range(args.rounds):
        order = CONFIGS[r % 3:] + CONFIGS[:r % 3]
        for bench in ("throughput", "latency"):
            for name in order:
                c = conf[name]
                t0 = time.monotonic()
                res = run_bench(c["python"], c["dir"], bench, sizes[bench] + c["auth"], args.log)
                figures = pick(bench, res, args.tasks)
                got[name][r].update(figures)
                print(f"round {r + 1}/{args.rounds} {bench:10} {name:8} {figures} ({time.monotonic() - t0:.0f}s, "
                      f"load {loadavg().split()[0]})", file=sys.stderr, flush=True)
    return got


def pick(bench: str, res: dict[str, Any], tasks: int) -> dict[str, float]:
    """The figures compared: tasks/s, all CPU and etcd's CPU per task (ms; CPU is less swayed by
    the machine's load than time is) of a throughput run; median and p99 ms of a latency run."""
    if bench == "latency":
        return {"latency_median_ms": res["median_ms"], "latency_p99_ms": res["p99_ms"]}
    etcd_cpu = res.get("cpu_seconds", {}).get("etcd", {}).get("own", float("nan"))
    return {"throughput_tasks_per_second": res["tasks_per_second"], "cpu_ms_per_task": res["cpu_ms_per_task"],
            "etcd_cpu_ms_per_task": round(1000 * etcd_cpu / tasks, 3)}


FIGURES = ("throughput_tasks_per_second", "cpu_ms_per_task", "etcd_cpu_ms_per_task", "latency_median_ms",
           "latency_p99_ms")


def summary(name: str, conf: dict[str, Any], runs: list[dict[str, float]],
            base: list[dict[str, float]] | None) -> dict[str, Any]:
    """Medians over the rounds; against ``base`` (the ``before`` runs), two ratios of each figure:
    of the medians, and the median of the rounds' own ratios (``paired``: each round's runs ran
    minutes apart, so a load that rises or falls during the comparison weighs less there)."""
    out: dict[str, Any] = {"config": name, "commit": conf["commit"], "auth": bool(conf["auth"])}
    for fig in FIGURES:
        out[fig] = round(statistics.median(r[fig] for r in runs), 3)
    out["throughput_runs"] = [r["throughput_tasks_per_second"] for r in runs]
    out["latency_runs_median_ms"] = [r["latency_median_ms"] for r in runs]
    if base is None:
        return out
    ratios: dict[str, float] = {}
    for fig in FIGURES:
        ratios[fig] = round(out[fig] / statistics.median(b[fig] for b in base), 3)
        ratios[f"{fig}_paired"] = round(statistics.median(r[fig] / b[fig] for r, b in zip(runs, base)), 3)
    out["ratio_vs_before"] = ratios  # throughput: > 1 is faster; CPU and latency: > 1 is slower
    out["within_10_percent"] = (ratios["throughput_tasks_per_second"] >= 0.9
                                and ratios["latency_median_ms"] <= 1.1)
    return out


def main() -> None:
    args = parse_args()
    conf = setups(args)
    load_before, started = loadavg(), time.time()
    print(f"load before: {load_before}", file=sys.stderr, flush=True)
    got = measure(args, conf)
    load_after = loadavg()
    print(f"load after: {load_after}", file=sys.stderr, flush=True)
    for name in CONFIGS:
        line = summary(name, conf[name], got[name], None if name == "before" else got["before"])
        line.update({"rounds": args.rounds, "tasks": args.tasks, "jobs": args.jobs,
                     "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(started)),
                     "minutes": round((time.time() - started) / 60, 1),
                     "loadavg_before": load_before, "loadavg_after": load_after})
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
