#!/usr/bin/env python3
"""Scale: big jobs of ``true`` tasks in one layer (issue 13): post, run, memory, etcd db, show.

One scenario is JOBS jobs of TASKS ``cmd: [true]`` tasks each (``--jobs 1 --tasks 100000``,
``--jobs 10 --tasks 10000``), on a fresh etcd and ``--nodes`` conductors with their defaults (slots,
and HTTP served by each conductor's ``conductor serve`` child on its own loopback port). The job
files are posted one after another with the CLI (``conductor post FILE --json``, as a user does).
``--scenario all`` runs 1 x 10,000, 10 x 10,000 and 1 x 100,000, each on its own cluster, and adds
how each measure grows from the 10,000-task job to the 100,000-task one.

Measured, per scenario:
  - ``post_seconds``: each ``conductor post`` process, start to exit (reading, checking, writing);
    with its CPU seconds and peak RSS;
  - ``run_seconds``: from the first post's start to the last job's ``ended`` stamp;
  - RSS every 0.5 s of etcd and, for each conductor, of its own process and of its ``supervisor``
    and ``serve`` children, separately: peak (the larger of the samples and the kernel's VmHWM) and
    at the end; etcd's db size (total and in use) and key count from its ``/metrics``, likewise;
  - ``show``: ``conductor show JOB`` (the CLI, a process, its table written to a file),
    ``Client.show(JOB, tasks=20)`` (what the CLI reads) and ``Client.job`` while the jobs run (0, 1,
    2, 4, 8... s after the last post; the job shown is the first one not yet ended), and once after;
    after, also ``conductor show`` (the job list) and ``Client.show(JOB, tasks=0)`` (every task);
  - CPU per task (etcd, conductors with their tasks and children, this client) and etcd's work per
    task, as the other benchmarks report them.

The issue's targets (``TARGETS``) are printed next to the figures with met yes/no; the post target
(100,000 tasks in 5 s) is applied as a rate, to the scenario's tasks. One JSON object on stdout;
progress and the tables on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import webload  # noqa: E402
from harness import BENCH_USER, NAMESPACE, Cluster, common_args, emit, run_main, say  # noqa: E402
from measure import cpu_delta, cpu_times, etcd_metrics, host_facts, per_task, true_job  # noqa: E402

MIB = 2 ** 20
SCENARIOS = {"1x10000": (1, 10_000), "10x10000": (10, 10_000), "1x100000": (1, 100_000)}
GROWTH = ("1x10000", "1x100000")  # growth ratios: the second scenario's figure over the first's

# The targets: (summary key, what, limit, unit). All are upper limits.
TARGETS = [
    ("post_seconds_per_100k", "post 100,000 tasks (CLI; scaled to the tasks posted)", 5.0, "s"),
    ("node_rss_peak_mib", "node RSS, conductor process, peak of the largest", 150.0, "MiB"),
    ("etcd_rss_peak_mib", "etcd RSS, peak", 400.0, "MiB"),
    ("etcd_db_peak_mib", "etcd db size, peak", 100.0, "MiB"),
    ("show_running_s", "conductor show JOB while it runs, median", 0.5, "s"),
]
_DB_METRICS = {"etcd_mvcc_db_total_size_in_bytes": "db", "etcd_mvcc_db_total_size_in_use_in_bytes": "db_in_use",
               "etcd_debugging_mvcc_keys_total": "keys"}


# ---- sampling memory and etcd's db --------------------------------------------------------------

def etcd_db(cl: Cluster) -> dict[str, float]:
    """etcd's db size and size in use (MiB) and its key count, from its /metrics."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://{cl.endpoint}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name in _DB_METRICS:
                key = _DB_METRICS[name]
                out[key] = float(value) if key == "keys" else round(float(value) / MIB, 1)
    return out


def vm_hwm_mib(pid: int) -> float:
    """The kernel's peak RSS of a process (VmHWM), which catches peaks between samples; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


class Sampler(threading.Thread):
    """Every ``every`` seconds: RSS (MiB) of etcd and of each conductor's process and its
    ``supervisor`` and ``serve`` children (``b1.conductor``, ``b1.supervisor``...), and etcd's db.
    Keeps each figure's peak and last value and a coarse timeline (MiB, ``etcd.keys`` a count)."""

    def __init__(self, cl: Cluster, every: float = 0.5):
        super().__init__(name="sampler", daemon=True)
        self.cl, self.every = cl, every
        self.stopped = threading.Event()
        self.peak: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.timeline: list[dict[str, Any]] = []
        self._kinds: dict[int, str | None] = {}
        self.t0 = time.monotonic()

    def _kind(self, kid: Any) -> str | None:
        if kid.pid not in self._kinds:
            argv = " ".join(kid.cmdline())
            self._kinds[kid.pid] = ("supervisor" if "conductor.supervisor" in argv
                                    else "serve" if " serve " in argv else None)
        return self._kinds[kid.pid]

    def rss(self) -> dict[str, float]:
        import psutil

        out: dict[str, float] = {}
        procs = {"etcd": self.cl.etcd_proc, **self.cl.nodes}
        for name, proc in procs.items():
            if proc is None:
                continue
            try:
                p = psutil.Process(proc.pid)
                out[name if name == "etcd" else f"{name}.conductor"] = p.memory_info().rss / MIB
                for kid in ([] if name == "etcd" else p.children()):
                    kind = self._kind(kid)
                    if kind:
                        key = f"{name}.{kind}"
                        out[key] = out.get(key, 0.0) + kid.memory_info().rss / MIB
            except psutil.Error:
                continue  # stopped, or a child gone between listing and reading
        return out

    def sample(self) -> None:
        now = {k: round(v, 1) for k, v in self.rss().items()}
        try:
            now.update({f"etcd.{k}": v for k, v in etcd_db(self.cl).items()})
        except OSError:
            pass
        for key, value in now.items():
            self.peak[key] = max(self.peak.get(key, 0.0), value)
        self.last = now
        self.timeline.append({"t": round(time.monotonic() - self.t0, 1), **now})

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.every)

    def finish(self) -> dict[str, Any]:
        """Stop sampling and take one last sample: peaks (with VmHWM), ends and a timeline of at most
        about 40 points."""
        self.stopped.set()
        self.join(timeout=10)
        self.sample()
        hwm = {"etcd": vm_hwm_mib(self.cl.etcd_proc.pid) if self.cl.etcd_proc else 0.0}
        hwm.update({f"{n}.conductor": vm_hwm_mib(p.pid) for n, p in self.cl.nodes.items()})
        peak = {k: max(v, hwm.get(k, 0.0)) for k, v in self.peak.items()}
        step = max(1, len(self.timeline) // 40)
        return {"peak": peak, "end": self.last, "vm_hwm": hwm, "timeline": self.timeline[::step]}


# ---- the CLI and the client, timed -----------------------------------------------------------------

def cli(cl: Cluster, *args: str, out: Path | None = None, profile: Path | None = None) -> dict[str, Any]:
    """Run ``conductor ARGS`` against the bench's etcd, stdout to ``out``: its wall seconds, CPU
    seconds and peak RSS (from wait4, so of that process alone). With ``profile``, under ``py-spy
    record`` writing collapsed stacks there (then the figures are py-spy's and slower). Raises
    RuntimeError if it fails."""
    argv = [sys.executable, "-m", "conductor", *args, "--etcd", cl.endpoint, "--namespace", NAMESPACE]
    if profile is not None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        argv = [spy, "record", "--rate", "200", "--format", "raw", "--threads", "-o", str(profile), "--", *argv]
    if cl.auth:
        argv += ["--user", BENCH_USER, "--password-file", str(cl.password_file(BENCH_USER))]
    err_path = cl.tmp / "cli.err"
    t0 = time.perf_counter()
    with open(out or os.devnull, "wb") as sink, open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=sink, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if proc.returncode != 0:
        raise RuntimeError(f"conductor {' '.join(args[:2])} failed ({proc.returncode}): "
                           f"{err_path.read_text(errors='replace')[-800:]}")
    return {"s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "max_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def timed(call: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = call(*args, **kwargs)
    return round(time.perf_counter() - t0, 4), value


def post_jobs(cl: Cluster, files: list[Path], profile: Path | None) -> tuple[list[str], list[dict[str, Any]]]:
    """Post each file with ``conductor post FILE --json``, one after another; the job ids and each
    post's figures. With ``profile`` (a directory), the first post runs under py-spy."""
    ids, posts = [], []
    for i, path in enumerate(files):
        out = cl.tmp / "post.json"
        spy = profile / "post.txt" if profile and i == 0 else None
        done = cli(cl, "post", str(path), "--json", out=out, profile=spy)
        # the JSON line (py-spy, with --profile, writes its own chatter to the same stdout)
        text = "\n".join(x for x in out.read_text().splitlines() if not x.startswith("py-spy>"))
        ids.append(json.loads(text)["id"])
        posts.append(done)
        say(f"posted {path.name} as {ids[-1]} in {done['s']:.2f}s ({i + 1}/{len(files)})")
    return ids, posts


class Shows:
    """Timings of the read path: ``conductor show JOB``, ``Client.show`` and ``Client.job``."""

    def __init__(self, cl: Cluster, client: Any, profile: Path | None):
        self.cl, self.client, self.profile = cl, client, profile
        self.running: list[dict[str, Any]] = []
        self.job_reads: list[float] = []

    def sample_running(self, job_id: str, since_post: float) -> None:
        spy = self.profile / "show-running.txt" if self.profile and not self.running else None
        cli_s = cli(self.cl, "show", job_id, out=self.cl.tmp / "show.txt", profile=spy)["s"]
        show_s, tree = timed(self.client.show, job_id, tasks=20)
        job_s, _ = timed(self.client.job, job_id)
        done = tree["counts"]["completed"]
        self.running.append({"after_post_s": round(since_post, 1), "job": job_id, "cli_show_s": cli_s,
                             "client_show_s": show_s, "client_job_s": job_s, "completed_then": done})
        say(f"  show {job_id} at +{since_post:.0f}s: CLI {cli_s:.2f}s, Client.show {show_s:.3f}s, "
            f"Client.job {job_s:.4f}s ({done} completed)")

    def after(self, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cli_show_s": cli(self.cl, "show", job_id, out=self.cl.tmp / "show.txt")["s"],
                               "cli_list_s": cli(self.cl, "show", out=self.cl.tmp / "list.txt")["s"]}
        out["client_show_s"], _ = timed(self.client.show, job_id, tasks=20)
        out["client_job_s"], _ = timed(self.client.job, job_id)
        out["client_show_all_s"], tree = timed(self.client.show, job_id, tasks=0)
        out["client_show_all_tasks"] = sum(len(layer["task_list"]) for layer in tree["layer_list"])
        return out


def wait_all(client: Any, ids: list[str], shows: Shows, posted: float, timeout: float) -> list[dict[str, Any]]:
    """Read every job every 0.5 s (each ``Client.job`` timed) until all have ended; meanwhile sample
    the read path right after the last post and 1, 2, 4, 8... s after it. Returns the jobs. Raises
    TimeoutError."""
    deadline = time.monotonic() + timeout
    next_show, gap = 0.0, 1.0
    while True:
        jobs = []
        for job_id in ids:
            s, job = timed(client.job, job_id)
            shows.job_reads.append(s)
            jobs.append(job)
        running = [j for j in jobs if j["state"] not in ("COMPLETED", "ERRORED")]
        if not running:
            return jobs
        since = time.monotonic() - posted
        if since >= next_show:
            shows.sample_running(ids[jobs.index(running[0])], since)
            next_show, gap = (next_show + gap, gap * 2) if next_show else (1.0, 1.0)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(running)} jobs still running after {timeout:.0f}s")
        time.sleep(0.5)


# ---- one scenario ----------------------------------------------------------------------------------

def write_files(cl: Cluster, jobs: int, tasks: int) -> list[Path]:
    files = []
    for j in range(jobs):
        path = cl.tmp / f"scale-{tasks}-{j}.json"
        path.write_text(json.dumps(true_job(f"scale{j}", [tasks])))
        files.append(path)
    return files


def run_scenario(name: str, args: argparse.Namespace) -> dict[str, Any]:
    jobs, tasks = SCENARIOS.get(name) or (args.jobs, args.tasks)
    say(f"== scenario {name}: {jobs} x {tasks} tasks, {args.nodes} conductors")
    with Cluster(keep=args.keep, node_dir=args.node_dir, auth=args.auth) as cl:
        webload.start_nodes(cl, argparse.Namespace(http=args.http, nodes=args.nodes, slots=args.slots))
        client = cl.client()
        files = write_files(cl, jobs, tasks)
        file_mib = round(files[0].stat().st_size / MIB, 2)
        warm = client.post(true_job("warmup", [1]))
        client.wait(warm, timeout=60)
        baseline = {"cli_show_small_job_s": cli(cl, "show", warm, out=cl.tmp / "show.txt")["s"]}
        profile = Path(args.profile) / name if args.profile else None
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
        shows = Shows(cl, client, profile)
        sampler = Sampler(cl)
        sampler.start()
        try:
            cpu0, etcd0 = cpu_times(cl), etcd_metrics(cl)
            first = time.time()
            ids, posts = post_jobs(cl, files, profile)
            posted_wall, posted = time.time(), time.monotonic()
            ended = wait_all(client, ids, shows, posted, args.timeout)
            cpu = cpu_delta(cpu0, cpu_times(cl))
            etcd = per_task(etcd0, etcd_metrics(cl), jobs * tasks)
        finally:
            memory = sampler.finish()
        after = shows.after(ids[0])
        counts = [client.counts(j) for j in ids]
        host = host_facts(cl)
    last_end = max(j["ended"] for j in ended)
    out = {"scenario": name, "jobs": jobs, "tasks_per_job": tasks, "nodes": args.nodes,
           "slots": args.slots or "default", "http": args.http, "auth": args.auth,
           "states": sorted({j["state"] for j in ended}), "completed": sum(c.get("completed", 0) for c in counts),
           "job_file_mib": file_mib,
           "post": posts, "post_total_s": round(posted_wall - first, 2),
           "run_s": round(last_end - first, 2), "run_s_after_last_post": round(last_end - posted_wall, 2),
           "tasks_per_s": round(jobs * tasks / (last_end - first), 1),
           "show": {**baseline, "running": shows.running, "after": after,
                    "client_job_polls": {"n": len(shows.job_reads), "median_s": _median(shows.job_reads),
                                         "max_s": max(shows.job_reads)}},
           "memory": memory, "cpu_seconds": cpu, "cpu_ms_per_task": _cpu_ms(cpu, jobs * tasks),
           "etcd_per_task": etcd, "host": host}
    out["summary"] = summarise(out)
    out["targets"] = judge(out["summary"])
    say(f"== {name}: {out['states']}, {out['completed']} completed; post {out['post_total_s']}s, "
        f"run {out['run_s']}s ({out['tasks_per_s']}/s), load {host['load1']}")
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _cpu_ms(cpu: dict[str, Any], tasks: int) -> float:
    total = sum(v.get("own", 0) + v.get("children", 0) + v.get("fence", 0) + v.get("web", 0)
                for name, v in cpu.items() if not name.endswith("_threads"))
    return round(1000 * total / tasks, 2)


def _largest(figures: dict[str, float], part: str) -> float:
    return max((v for k, v in figures.items() if k.endswith(f".{part}")), default=0.0)


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    """The scenario's headline figures, flat: what the targets and the growth ratios compare."""
    peak, end, running = r["memory"]["peak"], r["memory"]["end"], r["show"]["running"]
    total = r["jobs"] * r["tasks_per_job"]
    return {
        "post_s": r["post_total_s"], "post_seconds_per_100k": round(r["post_total_s"] * 100_000 / total, 2),
        "post_cli_max_rss_mib": max(p["max_rss_mib"] for p in r["post"]),
        "run_s": r["run_s"], "tasks_per_s": r["tasks_per_s"],
        "node_rss_peak_mib": _largest(peak, "conductor"), "node_rss_end_mib": _largest(end, "conductor"),
        "supervisor_rss_peak_mib": _largest(peak, "supervisor"), "serve_rss_peak_mib": _largest(peak, "serve"),
        "etcd_rss_peak_mib": peak.get("etcd", 0.0), "etcd_rss_end_mib": end.get("etcd", 0.0),
        "etcd_db_peak_mib": peak.get("etcd.db", 0.0), "etcd_db_end_mib": end.get("etcd.db", 0.0),
        "etcd_db_in_use_end_mib": end.get("etcd.db_in_use", 0.0), "etcd_keys_end": end.get("etcd.keys", 0.0),
        "show_running_s": _median([s["cli_show_s"] for s in running]),
        "show_running_max_s": max((s["cli_show_s"] for s in running), default=None),
        "client_show_running_s": _median([s["client_show_s"] for s in running]),
        "client_job_running_s": _median([s["client_job_s"] for s in running]),
        "show_after_s": r["show"]["after"]["cli_show_s"], "client_show_after_s": r["show"]["after"]["client_show_s"],
        "client_show_all_after_s": r["show"]["after"]["client_show_all_s"],
        "cli_show_small_job_s": r["show"]["cli_show_small_job_s"], "cpu_ms_per_task": r["cpu_ms_per_task"],
    }


def judge(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, what, limit, unit in TARGETS:
        value = summary.get(key)
        met = "n/a" if value is None else "yes" if value <= limit else "no"  # None: the job ended before a show
        rows.append({"measure": key, "what": what, "value": value, "target": f"<= {limit:g} {unit}", "met": met})
    return rows


def growth(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each summary figure of every scenario, and the ratio of GROWTH's second to its first."""
    small, big = (results.get(name) for name in GROWTH)
    out: dict[str, dict[str, Any]] = {}
    for key in (small or big or {}).get("summary", {}):
        row: dict[str, Any] = {name: r["summary"].get(key) for name, r in results.items()}
        a, b = (r["summary"].get(key) if r else None for r in (small, big))
        row["ratio_100k_vs_10k"] = round(b / a, 2) if a and b is not None else None
        out[key] = row
    return out


def print_tables(results: dict[str, dict[str, Any]], grown: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    say("\n| target | " + " | ".join(names) + " | target |")
    say("|---|" + "---|" * (len(names) + 1))
    for i, (key, what, _, _) in enumerate(TARGETS):
        cells = [f"{r['targets'][i]['value']} ({r['targets'][i]['met']})" for r in results.values()]
        say(f"| {what} | " + " | ".join(cells) + f" | {results[names[0]]['targets'][i]['target']} |")
    if grown:
        say("\n| measure | " + " | ".join(names) + " | 100k / 10k |")
        say("|---|" + "---|" * (len(names) + 1))
        for key, row in grown.items():
            say(f"| {key} | " + " | ".join(str(row.get(n)) for n in names) + f" | {row['ratio_100k_vs_10k']} |")


def main() -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--scenario", choices=("custom", "all", *SCENARIOS), default="custom",
                   help="all: 1x10000, 10x10000, 1x100000 and the growth ratios; custom: --jobs x --tasks")
    p.add_argument("--jobs", type=int, default=1, help="jobs posted one after another (custom)")
    p.add_argument("--tasks", type=int, default=100_000, help="true tasks per job, in one layer (custom)")
    p.add_argument("--nodes", type=int, default=2, help="conductors to start")
    p.add_argument("--slots", type=int, default=0, help="slots per conductor (0: the conductor's default)")
    p.add_argument("--http", choices=("on", "off"), default="on",
                   help="on (the conductor's default): each serves HTTP on its own loopback port")
    p.add_argument("--timeout", type=float, default=3600, help="give up on a scenario's jobs after this many s")
    p.add_argument("--profile", metavar="DIR", help="run the first post and the first show while running under "
                                                   "py-spy: DIR/<scenario>/post.txt and show-running.txt "
                                                   "(their timings are then py-spy's: profile in its own run)")
    args = p.parse_args()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = {}
    for name in names:
        key = f"{args.jobs}x{args.tasks}" if name == "custom" else name
        results[key] = run_scenario(name, args)
    grown = growth(results) if args.scenario == "all" else {}
    print_tables(results, grown)
    emit({"bench": "scale", "scenarios": results, "growth": grown,
          "targets": {n: r["targets"] for n, r in results.items()}})


if __name__ == "__main__":
    run_main(main)
