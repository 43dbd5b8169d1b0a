"""Driver of the peer benchmark: every workload RUNS times per system, interleaved; one JSON summary.

Called by run.sh (which owns redis-server and the venvs) with the peers' venv; the conductor_*
scripts run with $PEERBENCH_CONDUCTOR_PY (a venv with the project installed in editable mode).
Runs are interleaved: run 1 of every cell (W1 Celery, W1 ceiling, W1 Conductor, W2 ...), then
run 2, so that load from anything else on the box hits every system alike. W3 (recovery, bound by
timeouts, not CPU) runs afterwards, only with W3=1. Conductor runs with its defaults (no --slots).

Knobs (environment): RUNS=3 N=1000 N_BIG=5000 CONC=2 W4_N=200 W3=0
  SYSTEMS="celery ceiling conductor"   (add "rq" for RQ + Redis)
Prints ONE JSON object on stdout (medians, min-max, ratios, targets, load before and after) and the
markdown table on stderr; with --table, the table on stdout instead of the JSON. Raw JSON lines
go to $PEERBENCH_SCRATCH/results/raw-<stamp>.jsonl, the summary and the table next to them.
--from RAW.jsonl runs nothing and summarises an earlier run (give it that run's knobs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import report

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PY = sys.executable
SCRATCH = os.environ.get("PEERBENCH_SCRATCH", "/tmp/conductor-peers")
RUNS = int(os.environ.get("RUNS", "3"))
N = int(os.environ.get("N", "1000"))
N_BIG = int(os.environ.get("N_BIG", "5000"))
CONC = int(os.environ.get("CONC", "2"))
W4_N = int(os.environ.get("W4_N", "200"))
DO_W3 = os.environ.get("W3", "0") != "0"
SYSTEMS = list(dict.fromkeys(os.environ.get("SYSTEMS", "celery ceiling conductor").split()))
CPY = os.environ.get("PEERBENCH_CONDUCTOR_PY", os.path.join(SCRATCH, "cvenv", "bin", "python"))
KNOWN = ("celery", "rq", "ceiling", "conductor")
BIG_LIMIT_S = 120.0   # W1 N_BIG is not repeated for a system once one run took longer than this

STAMP = time.strftime("%Y%m%d-%H%M%S")
RES_DIR = os.path.join(SCRATCH, "results")
RAW = os.path.join(RES_DIR, f"raw-{STAMP}.jsonl")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _text(x: Any) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")


def run_once(key: str, argv: list[str], timeout: float = 1200) -> tuple[dict[str, Any], float]:
    """Run one workload script; its last JSON line (or an error record), and how long it took."""
    t0, load, up = time.monotonic(), os.getloadavg(), uptime()
    py = CPY if key.startswith("conductor") else PY
    try:
        p = subprocess.run([py, *argv], cwd=HERE, capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -9, _text(exc.stdout), f"timed out after {timeout}s\n" + _text(exc.stderr)
    elapsed = time.monotonic() - t0
    lines = [line for line in out.splitlines() if line.startswith("{")]
    meta = {"key": key, "argv": argv, "loadavg_before": [round(x, 2) for x in load], "uptime_before": up}
    if rc != 0 or not lines:
        rec = {**meta, "error": True, "rc": rc, "stderr_tail": err[-2000:]}
        log(f"  FAILED {key}: rc={rc}\n{err[-1500:]}")
    else:
        rec = {**json.loads(lines[-1]), **meta, "script_s": round(elapsed, 2)}
        log(f"  {key}: {lines[-1][:400]}")
    with open(RAW, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    return rec, elapsed


def _system_steps(system: str) -> list[tuple[str, list[str]]]:
    if system == "ceiling":
        return [(f"ceiling/W1/N={N}", ["ceiling.py", "W1", str(N), str(CONC)]),
                (f"ceiling/W1/N={N_BIG}", ["ceiling.py", "W1", str(N_BIG), str(CONC)]),
                (f"ceiling/W2/N={N}", ["ceiling.py", "W2", str(N), str(CONC)]),
                (f"ceiling/W4/N={W4_N}", ["ceiling.py", "W4", str(W4_N), str(CONC)])]
    # Conductor as a user runs it: its own default slots (the scripts' "--slots default" omits --slots)
    extra = ["--slots", "default"] if system == "conductor" else []
    return [(f"{system}/W1/N={N}", [f"{system}_w1_throughput.py", str(N), str(CONC), *extra]),
            (f"{system}/W1/N={N_BIG}", [f"{system}_w1_throughput.py", str(N_BIG), str(CONC), *extra]),
            (f"{system}/W2/N={N}", [f"{system}_w2_workflow.py", str(N), str(CONC), *extra]),
            (f"{system}/W4/N={W4_N}", [f"{system}_w4_latency.py", str(W4_N), str(CONC), *extra])]


W3_STEPS = {
    "celery": [("celery/W3/vt=default(3600)", ["celery_w3_recovery.py", "1", "1", "--wait", "60"]),
               ("celery/W3/vt=10", ["celery_w3_recovery.py", "1", "1", "--vt", "10", "--wait", "150"])],
    "rq": [("rq/W3/defaults", ["rq_w3_recovery.py", "1", "1", "--wait", "60"]),
           ("rq/W3/tuned", ["rq_w3_recovery.py", "1", "1", "--tuned", "--wait", "150"])],
    "conductor": [("conductor/W3/ttl=default(10)", ["conductor_w3_recovery.py", "1", "1", "--wait", "60"])],
}


def fast_steps() -> list[tuple[str, list[str]]]:
    """Every throughput/latency cell, ordered workload by workload, system by system."""
    per_system = [_system_steps(s) for s in SYSTEMS]
    return [step for group in zip(*per_system) for step in group]


def run_all() -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    skip: set[str] = set()
    steps = fast_steps()
    for i in range(RUNS):
        for key, argv in steps:
            if key in skip:
                continue
            log(f"[{key}] run {i + 1}/{RUNS}, load {os.getloadavg()[0]:.2f}")
            rec, elapsed = run_once(key, argv)
            results.setdefault(key, []).append(rec)
            if f"/W1/N={N_BIG}" in key and N_BIG != N and elapsed > BIG_LIMIT_S:
                log(f"[{key}] took {elapsed:.0f}s > {BIG_LIMIT_S:.0f}s: not repeating")
                skip.add(key)
    for system in SYSTEMS if DO_W3 else []:
        for key, argv in W3_STEPS.get(system, []):
            for i in range(RUNS):
                log(f"[{key}] run {i + 1}/{RUNS}")
                results.setdefault(key, []).append(run_once(key, argv)[0])
    return results


def w3_summary(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Recovery seconds per W3 variant (None for a run that did not recover in its wait)."""
    return {key: [r.get("recovery_s") for r in recs if not r.get("error")]
            for key, recs in results.items() if "/W3/" in key}


def versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    v: dict[str, Any] = {}
    for mod in ("celery", "kombu", "redis", "rq"):
        try:
            v[mod] = version(mod)
        except PackageNotFoundError:
            v[mod] = None
    for name, argv, index in (("redis-server", ["redis-server", "--version"], 2),
                              ("etcd", [os.environ.get("PEERBENCH_ETCD_BIN", "/usr/bin/etcd"), "--version"], 2)):
        try:
            v[name] = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.split()[index]
        except (OSError, IndexError, subprocess.SubprocessError):
            v[name] = None
    v["conductor_commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                           capture_output=True, text=True).stdout.strip() or None
    v["conductor_tree_dirty"] = bool(subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "conductor", "cli"],
                                                    capture_output=True, text=True).stdout.strip())
    v["python"] = sys.version.split()[0]
    v["cpus"] = os.cpu_count()
    return v


def check_systems() -> None:
    unknown = [s for s in SYSTEMS if s not in KNOWN]
    if unknown or "conductor" not in SYSTEMS:
        sys.exit(f"SYSTEMS: {' '.join(SYSTEMS)!r}: each must be one of {', '.join(KNOWN)}, and conductor "
                 "must be one of them")
    if RUNS < 1 or min(N, N_BIG, W4_N, CONC) < 1:
        sys.exit("RUNS, N, N_BIG, W4_N and CONC must be positive integers")


def load_raw(path: str) -> dict[str, list[dict[str, Any]]]:
    """The records of an earlier run's raw JSON lines, grouped by cell, in run order."""
    results: dict[str, list[dict[str, Any]]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                results.setdefault(rec["key"], []).append(rec)
    return results


def build(results: dict[str, list[dict[str, Any]]], before: str, after: str, seconds: float | None,
          raw: str, ver: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The JSON summary and the markdown table (with the load before and after) of one run."""
    columns = [s for s in KNOWN if s in SYSTEMS]
    rows = report.summarise(results, columns, N, N_BIG, W4_N)
    table = report.markdown(rows, columns, report.digits_of(N, N_BIG, W4_N), RUNS)
    failed = [r["key"] for recs in results.values() for r in recs if r.get("error") or r.get("ok") is False]
    summary = {"bench": "peers", "stamp": STAMP,
               "knobs": {"RUNS": RUNS, "N": N, "N_BIG": N_BIG, "W4_N": W4_N, "CONC": CONC, "W3": int(DO_W3),
                         "SYSTEMS": columns},
               "uptime_before": before, "uptime_after": after, "seconds": seconds,
               "versions": ver, "rows": rows, "w3_recovery_s": w3_summary(results),
               "failed_runs": failed, "raw": raw}
    return summary, f"{table}\n\nload before: {before}\nload after:  {after}\n"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Conductor side by side with Celery + Redis and the ceiling "
                                             "(knobs in the environment, see the module's docstring)")
    ap.add_argument("--table", action="store_true", help="print the markdown table on stdout instead of the JSON")
    ap.add_argument("--from", dest="raw", metavar="RAW.jsonl",
                    help="run nothing: summarise an earlier run's raw JSON lines (with that run's knobs)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    check_systems()
    os.makedirs(RES_DIR, exist_ok=True)
    if args.raw:
        results = load_raw(args.raw)
        first = next(iter(results.values()), [{}])[0]
        # the versions (and commit) are today's, not necessarily the run's
        summary, text = build(results, first.get("uptime_before", "n/a"), "n/a (summarised from the raw file)",
                              None, args.raw, {**versions(), "summarised_later": True})
    else:
        ver = versions()   # before the run: the commit measured, even if the tree moves on meanwhile
        before, t0 = uptime(), time.monotonic()
        log(f"peer benchmark: systems {' '.join(SYSTEMS)}, RUNS={RUNS} N={N} N_BIG={N_BIG} W4_N={W4_N} "
            f"CONC={CONC} W3={int(DO_W3)}; {before}")
        results = run_all()
        summary, text = build(results, before, uptime(), round(time.monotonic() - t0), RAW, ver)
    with open(os.path.join(RES_DIR, f"summary-{STAMP}.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(RES_DIR, f"table-{STAMP}.md"), "w") as f:
        f.write(text)
    if args.table:
        print(text, flush=True)
    else:
        log(text)
        print(json.dumps(summary), flush=True)
    if summary["failed_runs"]:
        log(f"{len(summary['failed_runs'])} run(s) failed or reported ok=false: {', '.join(summary['failed_runs'])}; "
            f"see {summary['raw']}")
        sys.exit(1)


if __name__ == "__main__":
    main()
