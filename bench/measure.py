"""What a benchmark run cost and how long it took: timed jobs, CPU by process and by thread,
etcd's own counters, file-creation cost where the task logs go, py-spy profiles, percentiles.

The processes themselves (etcd, conductors, clean-up) are :mod:`harness`'s job.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import webload
from harness import Cluster, say


def host_facts(cluster: "Cluster | None" = None) -> dict[str, Any]:
    """The machine the numbers come from; the load average shows whether it was otherwise busy."""
    facts: dict[str, Any] = {"cpus": os.cpu_count(), "load1": round(os.getloadavg()[0], 2)}
    if cluster is not None:
        facts["load1_before"] = round(cluster.load_before, 2)
        facts["node_dir"] = cluster.node_kind
        facts["file_create_us"] = {"node_dir": file_create_us(cluster.node_root),
                                   "bench_tmp": file_create_us(cluster.tmp)}
    return facts


def file_create_us(directory: Path, n: int = 300) -> float:
    """CPU microseconds to create (and close) one empty file in ``directory``, as a task's log is.

    On ext4 this is ~15 us normally, but for a minute or more after many files were deleted
    (another run's clean-up; measured at the end of a run, before its own) the inode allocator scans past every
    recently deleted inode, and one
    creation can cost 0.2-0.6 ms: then the task logs' file system, not Conductor, sets the pace."""
    probe = Path(tempfile.mkdtemp(prefix="create-probe-", dir=directory))
    try:
        t0 = time.process_time()
        for i in range(n):
            os.close(os.open(probe / f"{i}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        return round((time.process_time() - t0) / n * 1e6, 1)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_times(cl: Cluster) -> dict[str, dict[str, float]]:
    """CPU seconds so far of etcd and of each conductor: own (user+system, all threads) and
    children (waited-for children: the tasks' processes and their descendants)."""
    import psutil

    procs = {"etcd": cl.etcd_proc, **cl.nodes}
    me = os.times()
    out: dict[str, dict[str, float]] = {"bench_client": {"own": me.user + me.system, "own_system": me.system}}
    for name, proc in procs.items():
        if proc is None or proc.poll() is not None:
            continue
        try:
            t = psutil.Process(proc.pid).cpu_times()
            kids = psutil.Process(proc.pid).children()
            fence = sum(sum(k.cpu_times()[:2]) for k in kids if "conductor.supervisor" in " ".join(k.cmdline()))
            web = sum(sum(k.cpu_times()[:2]) for k in kids if " serve " in " ".join(k.cmdline()))
        except psutil.Error:
            continue
        out[name] = {"own": t.user + t.system, "own_system": t.system,
                     "children": t.children_user + t.children_system, "fence": fence, "web": web}
        if name != "etcd":
            out[f"{name}_threads"] = thread_times(proc.pid)
    return out


def thread_times(pid: int) -> dict[str, float]:
    """CPU seconds of a conductor's threads by OS thread name (conductor names its own;
    gRPC's C threads and unnamed ones are summed under their comm, e.g. ``python``)."""
    import psutil

    out: dict[str, float] = {}
    try:
        threads = psutil.Process(pid).threads()
    except psutil.Error:
        return out
    for t in threads:
        try:
            with open(f"/proc/{pid}/task/{t.id}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        out[comm] = out.get(comm, 0.0) + t.user_time + t.system_time
    return out


def cpu_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {name: {k: round(v - before.get(name, {}).get(k, 0.0), 2) for k, v in vals.items()}
            for name, vals in after.items()}


def etcd_metrics(cl: Cluster) -> dict[str, float]:
    """Counters from etcd's /metrics: revision, key puts and deletes, txns, ranges, watch events
    sent, and gRPC requests handled by method."""
    wanted = {"etcd_debugging_mvcc_current_revision": "revision", "etcd_debugging_mvcc_put_total": "puts",
              "etcd_debugging_mvcc_delete_total": "deletes", "etcd_debugging_mvcc_txn_total": "txns",
              "etcd_debugging_mvcc_range_total": "ranges", "etcd_debugging_mvcc_events_total": "watch_events"}
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://{cl.endpoint}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
        elif name.startswith("grpc_server_handled_total{") and 'grpc_type="unary"' in name:
            method = name.split('grpc_method="', 1)[1].split('"', 1)[0]
            out[f"rpc_{method}"] = out.get(f"rpc_{method}", 0) + float(value)
    return out


def per_task(before: dict[str, float], after: dict[str, float], tasks: int) -> dict[str, float]:
    """etcd work per task between two :func:`etcd_metrics` readings."""
    return {k: round((after[k] - before.get(k, 0.0)) / tasks, 2) for k in after
            if after[k] - before.get(k, 0.0)}


def start_profilers(cl: Cluster, out_dir: str | Path, names: list[str] | None = None, rate: int = 250,
                    gil: bool = False) -> list[Any]:
    """Attach ``py-spy record`` (collapsed stacks) to conductors; stop with :func:`stop_profilers`.

    With ``gil`` only the thread holding the GIL is sampled: Python CPU time, by function."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for name in names or list(cl.nodes):
        argv = [spy, "record", "--pid", str(cl.nodes[name].pid), "--rate", str(rate), "--format", "raw",
                "--threads", "--nonblocking", "-o", str(out / f"{name}.txt")] + (["--gil"] if gil else [])
        spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # py-spy needs a moment to attach
    return spies


def stop_profilers(spies: list[Any]) -> None:
    for spy in spies:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(timeout=20)
        except subprocess.TimeoutExpired:
            spy.kill()


def true_job(name: str, layer_sizes: list[int], cmd: list[str] | None = None) -> dict[str, Any]:
    """A job of layers of ``true`` tasks (or of ``cmd``), one layer per order."""
    argv = cmd or ["true"]
    return {"name": name,
            "layers": [{"name": f"l{i}", "order": i, "tasks": [{"name": f"t{j}", "cmd": argv} for j in range(n)]}
                       for i, n in enumerate(layer_sizes)]}


def wait_for(client: Any, job_id: str, timeout: float, mode: str = "wait") -> dict[str, Any]:
    """The job once it is COMPLETED or ERRORED: by ``Client.wait`` (watches), or by reading it every
    20 ms (``poll``: keeps the bench client's own CPU use, which grows with the job, out of the way)."""
    if mode == "wait":
        return client.wait(job_id, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(job_id)
        if job["state"] in ("COMPLETED", "ERRORED"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['state']}")
        time.sleep(0.02)


def add_job_args(p: argparse.ArgumentParser, slots: int) -> None:
    """Options shared by the benchmarks that time whole jobs (throughput, fanout)."""
    p.add_argument("--nodes", type=int, default=2, help="conductors to start")
    p.add_argument("--slots", type=int, default=slots, help="slots per conductor (0: the conductor's default)")
    p.add_argument("--warmup", type=int, default=20, help="tasks of an untimed warm-up job first (0: none)")
    p.add_argument("--repeat", type=int, default=1, help="time this many jobs in a row (same cluster); "
                                                        "the figures reported are those of the median run")
    p.add_argument("--timeout", type=float, default=600, help="give up on a job after this many seconds")
    p.add_argument("--wait-mode", choices=("wait", "poll"), default="wait",
                   help="wait: Client.wait (watches; the default); poll: read the job every 20 ms")
    p.add_argument("--profile", metavar="DIR", help="attach py-spy to each conductor during the first timed run "
                                                   "and write collapsed stacks to DIR/<node>.txt")
    p.add_argument("--profile-gil", action="store_true", help="with --profile: sample only the thread "
                                                              "holding the GIL (Python CPU time)")
    webload.add_args(p)


def time_jobs(cl: Cluster, make_job: Any, tasks: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start the conductors, then post ``make_job()`` ``args.repeat`` times, each timed from post to
    COMPLETED. Returns the median run's figures, every run's seconds, and where the CPU went."""
    urls = webload.start_nodes(cl, args)
    client = cl.client()
    if args.warmup:
        client.wait(client.post(true_job("warmup", [args.warmup])), timeout=60)
    pages = webload.Pages(urls, args.pages, args.page_kind).start()
    runs = []
    for r in range(args.repeat):
        job = make_job()
        spies = start_profilers(cl, args.profile, gil=args.profile_gil) if args.profile and r == 0 else []
        try:
            cpu0, etcd0 = cpu_times(cl), etcd_metrics(cl)
            wall0 = time.time()
            t0 = time.perf_counter()
            job_id = client.post(job)
            t1 = time.perf_counter()
            pages.show(job_id)
            done = wait_for(client, job_id, args.timeout, args.wait_mode)
            t2 = time.perf_counter()
            cpu = cpu_delta(cpu0, cpu_times(cl))
            etcd = per_task(etcd0, etcd_metrics(cl), tasks)
        finally:
            stop_profilers(spies)
        counts = client.counts(job_id)
        say(f"run {r + 1}: job {job_id} {done['state']} in {t2 - t0:.3f}s (post {t1 - t0:.3f}s), counts {counts}")
        if done["state"] != "COMPLETED":
            raise RuntimeError(f"job {job_id} ended {done['state']}: {counts}")
        runs.append({"seconds": t2 - t0, "post_seconds": t1 - t0, "cpu_seconds": cpu, "etcd_per_task": etcd,
                     "job": job_id, "posted_at": wall0, "done_at": wall0 + (t2 - t0)})
    web = {"http": args.http, **pages.stop()}
    best = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]
    cpu_total = sum(v.get("own", 0) + v.get("children", 0) + v.get("fence", 0)
                    for name, v in best["cpu_seconds"].items() if not name.endswith("_threads"))
    return {"seconds": round(best["seconds"], 3), "post_seconds": round(best["post_seconds"], 3),
            "runs_seconds": [round(x["seconds"], 3) for x in runs],
            "cpu_seconds": best["cpu_seconds"],
            "cpu_ms_per_task": round(1000 * cpu_total / tasks, 2),
            "etcd_per_task": best["etcd_per_task"], "web": web, "_run": best, "_client": client}
