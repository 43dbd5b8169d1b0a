"""Shared harness of the benchmarks: a private etcd, real conductor processes, clean-up.

Every benchmark is self-contained: it starts its own etcd on free loopback ports (never 2379) with
its data in a temporary directory, starts ``python -m conductor run`` processes against it (with
the interpreter running the benchmark, so any venv with conductor installed works), waits until
they are registered, and on the way out (normal end, exception, SIGTERM or Ctrl-C) stops the
conductors with SIGTERM, then etcd, and removes the temporary directory.

Results go to stdout as one JSON object (:func:`emit`); everything else goes to stderr (:func:`say`).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ETCD = os.environ.get("BENCH_ETCD_BIN", "/usr/bin/etcd")
NAMESPACE = "/bench/"
RESERVED_PORTS = {2379, 2380}


def say(*parts: Any) -> None:
    """Human chatter: stderr only, stdout is for the one JSON result."""
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=False), flush=True)


def host_facts(cluster: "Cluster | None" = None) -> dict[str, Any]:
    """The machine the numbers come from; the load average shows whether it was otherwise busy."""
    facts: dict[str, Any] = {"cpus": os.cpu_count(), "load1": round(os.getloadavg()[0], 2)}
    if cluster is not None:
        facts["load1_before"] = round(cluster.load_before, 2)
        facts["node_dir"] = cluster.node_kind
        facts["file_create_us"] = cluster.file_create_us
    return facts


def file_create_us(directory: Path, n: int = 300) -> float:
    """CPU microseconds to create (and close) one empty file in ``directory``, as a task's log is.

    On ext4 this is ~15 us normally, but for a minute or more after many files were deleted
    (another run's clean-up) the inode allocator scans past every recently deleted inode, and one
    creation can cost 0.2-0.6 ms: then the task logs' file system, not Conductor, sets the pace."""
    probe = Path(tempfile.mkdtemp(prefix="create-probe-", dir=directory))
    try:
        t0 = time.process_time()
        for i in range(n):
            os.close(os.open(probe / f"{i}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        return round((time.process_time() - t0) / n * 1e6, 1)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


class _Terminated(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP so that ``finally`` blocks clean up."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(f"signal {signum}")


class Cluster:
    """A private etcd plus conductor processes; use as a context manager.

    >>> with Cluster() as cl:
    ...     cl.start_nodes(2, slots=4)
    ...     client = cl.client()
    """

    def __init__(self, keep: bool = False, etcd_args: list[str] | None = None, node_dir: str = "tmpfs"):
        self.tmp = Path(tempfile.mkdtemp(prefix="conductor-bench-"))
        # the conductors' data directories (their task logs): see --node-dir
        self.node_kind = node_dir
        if node_dir == "tmpfs" and os.access("/dev/shm", os.W_OK):
            self.node_root = Path(tempfile.mkdtemp(prefix="conductor-bench-nodes-", dir="/dev/shm"))
        elif node_dir in ("tmpfs", "disk"):
            self.node_kind = "disk"
            self.node_root = self.tmp / "nodes"
        else:
            self.node_root = Path(tempfile.mkdtemp(prefix="conductor-bench-nodes-", dir=node_dir))
        self.node_root.mkdir(parents=True, exist_ok=True)
        self.file_create_us = {"node_dir": file_create_us(self.node_root), "bench_tmp": file_create_us(self.tmp)}
        self.keep = keep
        self.etcd_args = list(etcd_args or [])
        self.etcd_proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self._clients: list[Any] = []
        self._old_handlers: dict[int, Any] = {}

    # ---- context -----------------------------------------------------------------------------

    def __enter__(self) -> "Cluster":
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_terminated)
        self.load_before = os.getloadavg()[0]
        try:
            self.start_etcd()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt, _Terminated)):
            self.dump_logs()
        self.close()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---- etcd --------------------------------------------------------------------------------

    def start_etcd(self, timeout: float = 20.0) -> None:
        for attempt in range(5):
            self.port, peer = free_port(), free_port()
            if peer == self.port:
                continue
            data = self.tmp / "etcd"
            shutil.rmtree(data, ignore_errors=True)
            url, peer_url = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
            argv = [ETCD, "--name", "bench", "--data-dir", str(data),
                    "--listen-client-urls", url, "--advertise-client-urls", url,
                    "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                    "--initial-cluster", f"bench={peer_url}", "--initial-cluster-state", "new",
                    "--initial-cluster-token", f"bench-{os.getpid()}", "--logger", "zap", "--log-level", "warn",
                    *self.etcd_args]
            log = open(self.tmp / "etcd.log", "ab")
            self.etcd_proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.etcd_proc.poll() is not None:
                    break  # probably lost a port race: try other ports
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                        if json.loads(resp.read()).get("health") in ("true", True):
                            say(f"etcd ready on {self.endpoint} (pid {self.etcd_proc.pid}), data in {data}")
                            return
                except (OSError, ValueError):
                    pass
                time.sleep(0.05)
            self._stop_proc(self.etcd_proc, "etcd", grace=2)
            self.etcd_proc = None
        raise RuntimeError(f"etcd did not start; see {self.tmp / 'etcd.log'}:\n{self._tail(self.tmp / 'etcd.log')}")

    # ---- conductors --------------------------------------------------------------------------

    def start_node(self, name: str, *, slots: int | None = None, ttl: int | None = None,
                   sweep: float | None = None, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
        data = self.node_root / name
        data.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "conductor", "run", "--etcd", self.endpoint, "--namespace", NAMESPACE,
                "--name", name, "--data-dir", str(data)]
        if slots is not None:
            argv += ["--slots", str(slots)]
        if ttl is not None:
            argv += ["--ttl", str(ttl)]
        if sweep is not None:
            argv += ["--sweep", str(sweep)]
        argv += extra or []
        env = dict(os.environ)
        for var in ("CONDUCTOR_ETCD", "CONDUCTOR_NAMESPACE"):
            env.pop(var, None)
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(data), env=env)
        log.close()
        self.nodes[name] = proc
        say(f"conductor {name} started (pid {proc.pid}, slots {slots}, ttl {ttl})")
        return proc

    def start_nodes(self, count: int, *, prefix: str = "b", wait: bool = True, **kwargs: Any) -> list[str]:
        names = [f"{prefix}{i + 1}" for i in range(count)]
        for name in names:
            self.start_node(name, **kwargs)
        if wait:
            self.wait_registered(names)
        return names

    def wait_registered(self, names: list[str], timeout: float = 30.0) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            for name in names:
                proc = self.nodes.get(name)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"conductor {name} exited with {proc.returncode}:\n"
                                       f"{self._tail(self.tmp / f'{name}.log')}")
            live = {n.get("name") for n in client.nodes()}
            if set(names) <= live:
                say(f"registered: {', '.join(sorted(live))}")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"conductors {sorted(set(names) - live)} did not register in {timeout}s")
            time.sleep(0.05)

    def client(self, **kwargs: Any) -> Any:
        from conductor import Client

        c = Client(etcd=self.endpoint, namespace=NAMESPACE, **kwargs)
        self._clients.append(c)
        return c

    # ---- stopping ----------------------------------------------------------------------------

    @staticmethod
    def _stop_proc(proc: subprocess.Popen[bytes], name: str, grace: float = 10.0) -> None:
        if proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            say(f"{name} (pid {proc.pid}) did not stop in {grace}s; killing it")
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def cpu_times(self) -> dict[str, dict[str, float]]:
        """CPU seconds so far of etcd and of each conductor: own (user+system, all threads) and
        children (waited-for children: the tasks' processes and their descendants)."""
        import psutil

        procs = {"etcd": self.etcd_proc, **self.nodes}
        me = os.times()
        out: dict[str, dict[str, float]] = {"bench_client": {"own": me.user + me.system, "own_system": me.system}}
        for name, proc in procs.items():
            if proc is None or proc.poll() is not None:
                continue
            try:
                t = psutil.Process(proc.pid).cpu_times()
                kids = psutil.Process(proc.pid).children()
                fence = sum(sum(k.cpu_times()[:2]) for k in kids if "conductor.fence" in " ".join(k.cmdline()))
            except psutil.Error:
                continue
            out[name] = {"own": t.user + t.system, "own_system": t.system,
                         "children": t.children_user + t.children_system, "fence": fence}
            if name != "etcd":
                out[f"{name}_threads"] = self.thread_times(proc.pid)
        return out

    @staticmethod
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

    @staticmethod
    def cpu_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
        return {name: {k: round(v - before.get(name, {}).get(k, 0.0), 2) for k, v in vals.items()}
                for name, vals in after.items()}

    def etcd_metrics(self) -> dict[str, float]:
        """Counters from etcd's /metrics: revision, key puts and deletes, txns, ranges, watch events
        sent, and gRPC requests handled by method."""
        wanted = {"etcd_debugging_mvcc_current_revision": "revision", "etcd_debugging_mvcc_put_total": "puts",
                  "etcd_debugging_mvcc_delete_total": "deletes", "etcd_debugging_mvcc_txn_total": "txns",
                  "etcd_debugging_mvcc_range_total": "ranges", "etcd_debugging_mvcc_events_total": "watch_events"}
        out: dict[str, float] = {}
        with urllib.request.urlopen(f"http://{self.endpoint}/metrics", timeout=5) as resp:
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

    @staticmethod
    def per_task(before: dict[str, float], after: dict[str, float], tasks: int) -> dict[str, float]:
        """etcd work per task between two :meth:`etcd_metrics` readings."""
        return {k: round((after[k] - before.get(k, 0.0)) / tasks, 2) for k in after
                if after[k] - before.get(k, 0.0)}

    def start_profilers(self, out_dir: str | Path, names: list[str] | None = None, rate: int = 250,
                        gil: bool = False) -> list[Any]:
        """Attach ``py-spy record`` (collapsed stacks) to conductors; stop with :meth:`stop_profilers`.

        With ``gil`` only the thread holding the GIL is sampled: Python CPU time, by function."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        spies = []
        for name in names or list(self.nodes):
            argv = [spy, "record", "--pid", str(self.nodes[name].pid), "--rate", str(rate), "--format", "raw",
                    "--threads", "--nonblocking", "-o", str(out / f"{name}.txt")] + (["--gil"] if gil else [])
            spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # py-spy needs a moment to attach
        self._spies = spies
        return spies

    def stop_profilers(self) -> None:
        for spy in getattr(self, "_spies", []):
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
        for spy in getattr(self, "_spies", []):
            try:
                spy.wait(timeout=20)
            except subprocess.TimeoutExpired:
                spy.kill()
        self._spies = []

    def kill_node(self, name: str) -> float:
        """SIGKILL one conductor; returns the wall-clock time of the kill."""
        proc = self.nodes[name]
        at = time.time()
        proc.kill()
        proc.wait()
        return at

    def close(self) -> None:
        self.stop_profilers()
        for c in self._clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self._clients.clear()
        # SIGTERM every conductor at once, then wait for each.
        for proc in self.nodes.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, proc in self.nodes.items():
            self._stop_proc(proc, f"conductor {name}")
        self.nodes.clear()
        if self.etcd_proc is not None:
            self._stop_proc(self.etcd_proc, "etcd")
            self.etcd_proc = None
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()
        if self.keep:
            say(f"kept {self.tmp} and {self.node_root}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.node_root, ignore_errors=True)

    # ---- diagnostics -------------------------------------------------------------------------

    @staticmethod
    def _tail(path: Path, lines: int = 30) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def dump_logs(self) -> None:
        for path in sorted(self.tmp.glob("*.log")):
            say(f"---- {path.name} (last lines) ----\n{self._tail(path)}")


def run_main(main: Any) -> None:
    """Run a benchmark's main: a signal or Ctrl-C ends it quietly (after the clean-up), any other
    error with its message and exit status 1; the JSON result is printed only on success."""
    try:
        main()
    except (KeyboardInterrupt, _Terminated) as exc:
        say(f"interrupted ({exc or 'Ctrl-C'}); cleaned up")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - report and fail
        import traceback

        traceback.print_exc(file=sys.stderr)
        say(f"benchmark failed: {exc}")
        sys.exit(1)


def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, etcd data)")
    p.add_argument("--node-dir", default="tmpfs", metavar="tmpfs|disk|DIR",
                   help="where the conductors keep their data directories, i.e. one log file per task: "
                        "tmpfs (/dev/shm, the default), disk (the temporary directory), or a directory. "
                        "etcd's data always stays on disk")
    return p


def true_job(name: str, layer_sizes: list[int]) -> dict[str, Any]:
    """A job of layers of ``true`` tasks, one layer per order."""
    return {"name": name,
            "layers": [{"name": f"l{i}", "order": i, "tasks": [{"name": f"t{j}", "cmd": ["true"]} for j in range(n)]}
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
    p.add_argument("--slots", type=int, default=slots, help="slots per conductor")
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


def time_jobs(cl: Cluster, make_job: Any, tasks: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start the conductors, then post ``make_job()`` ``args.repeat`` times, each timed from post to
    COMPLETED. Returns the median run's figures, every run's seconds, and where the CPU went."""
    cl.start_nodes(args.nodes, slots=args.slots)
    client = cl.client()
    if args.warmup:
        client.wait(client.post(true_job("warmup", [args.warmup])), timeout=60)
    runs = []
    for r in range(args.repeat):
        job = make_job()
        if args.profile and r == 0:
            cl.start_profilers(args.profile, gil=args.profile_gil)
        cpu0, etcd0 = cl.cpu_times(), cl.etcd_metrics()
        wall0 = time.time()
        t0 = time.perf_counter()
        job_id = client.post(job)
        t1 = time.perf_counter()
        done = wait_for(client, job_id, args.timeout, args.wait_mode)
        t2 = time.perf_counter()
        cpu = cl.cpu_delta(cpu0, cl.cpu_times())
        etcd = cl.per_task(etcd0, cl.etcd_metrics(), tasks)
        cl.stop_profilers()
        counts = client.counts(job_id)
        say(f"run {r + 1}: job {job_id} {done['state']} in {t2 - t0:.3f}s (post {t1 - t0:.3f}s), counts {counts}")
        if done["state"] != "COMPLETED":
            raise RuntimeError(f"job {job_id} ended {done['state']}: {counts}")
        runs.append({"seconds": t2 - t0, "post_seconds": t1 - t0, "cpu_seconds": cpu, "etcd_per_task": etcd,
                     "job": job_id, "posted_at": wall0, "done_at": wall0 + (t2 - t0)})
    best = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]
    cpu_total = sum(v.get("own", 0) + v.get("children", 0) + v.get("fence", 0)
                    for name, v in best["cpu_seconds"].items() if not name.endswith("_threads"))
    return {"seconds": round(best["seconds"], 3), "post_seconds": round(best["post_seconds"], 3),
            "runs_seconds": [round(x["seconds"], 3) for x in runs],
            "cpu_seconds": best["cpu_seconds"],
            "cpu_ms_per_task": round(1000 * cpu_total / tasks, 2),
            "etcd_per_task": best["etcd_per_task"], "_run": best, "_client": client}
