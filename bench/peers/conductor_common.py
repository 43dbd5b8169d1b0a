"""Conductor side of the peer benchmark: a private etcd, `conductor run` processes, measurements.

Uses only Conductor's public interface: the `conductor` command (`python -m conductor run`) and
`from conductor import Client`. Run these scripts with the interpreter of a venv where the project
is installed (run.sh: $PEERBENCH_SCRATCH/cvenv, an editable install of the tree run.sh is in).

Every script run gets its own etcd (the Debian `etcd` binary, /usr/bin/etcd, or
$PEERBENCH_ETCD_BIN) on free loopback ports (never 2379/2380, nor the redis port), with its data
on disk under $PEERBENCH_SCRATCH/etcd/, as a fresh Redis db is what the peers get (they flush
theirs). The conductors are started with

    python -m conductor run --etcd 127.0.0.1:PORT --namespace /peerbench/ --name cN --data-dir DIR [--slots S] [--ttl T]

DIR (one log file per task) is on disk under $PEERBENCH_SCRATCH/cnodes/ by default, like the
default ~/.local/share/conductor; `--node-dir tmpfs` puts it under /dev/shm. Disk node dirs are
kept until run.sh ends (a running conductor also keeps its task logs for 7 days), because
deleting many files makes file creation slow on this ext4 for minutes; `file_create_us` in each
result records the cost of creating one file there. Everything is stopped by PID (its own
process group / process tree) on the way out.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import REDIS_PORT, SCRATCH, VENV_BIN, Proc

ETCD_BIN = os.environ.get("PEERBENCH_ETCD_BIN", "/usr/bin/etcd")
# `python -m conductor` with this interpreter: run.sh makes it a venv where the project it is run
# from is installed in editable mode, so the conductors run that tree's code as it is now.
CONDUCTOR_CMD = [sys.executable, "-m", "conductor"]
NAMESPACE = "/peerbench/"
AVOID_PORTS = {2379, 2380, 6391, REDIS_PORT}

# Every endpoint, namespace and data dir is passed explicitly; ambient CONDUCTOR_* settings of
# the shell (another cluster's etcd, say) must not reach the conductors or the client.
for _k in [k for k in os.environ if k.startswith("CONDUCTOR_")]:
    os.environ.pop(_k)


def free_port():
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in AVOID_PORTS:
            return port
    raise RuntimeError("no free port")


def cluster_from_args(tag, doc=None):
    """(args, Cluster) for a workload script: positional N and CONCURRENCY, then :func:`add_args`'s
    options; the cluster is not started (use it as a context manager, then ``start()``)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("n", type=int)
    ap.add_argument("concurrency", type=int)
    add_args(ap)
    a = ap.parse_args()
    return a, Cluster(tag, a.concurrency, slots=a.slots, ttl=a.ttl, node_dir=a.node_dir)


def add_args(ap):
    """Options every conductor script takes (positional N and CONCURRENCY come first)."""
    ap.add_argument("--slots", default="1",
                    help="slots per conductor: a number, or 'default' (the CPU count). Default 1, so "
                         "that CONCURRENCY conductors run CONCURRENCY tasks at once, as the peers do")
    ap.add_argument("--ttl", type=int, default=None, help="conductor --ttl (omit: its default, 10 s)")
    ap.add_argument("--node-dir", default="disk", choices=("disk", "tmpfs"),
                    help="where the conductors' data dirs (task logs) live")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="py-spy record each conductor during the timed part (collapsed stacks)")
    ap.add_argument("--profile-gil", action="store_true",
                    help="with --profile: sample only the thread holding the GIL (Python CPU time)")


# ---- etcd --------------------------------------------------------------------------------------

class Etcd:
    """A private single-member etcd on free loopback ports, data on disk in the scratch dir."""

    def __init__(self, tag):
        root = os.path.join(SCRATCH, "etcd")
        os.makedirs(root, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=f"{tag}-{os.getpid()}-", dir=root)
        self.tag = tag
        self.proc = None
        self.port = 0

    @property
    def endpoint(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=30.0, extra=()):
        for _ in range(5):
            self.port, peer = free_port(), free_port()
            if peer == self.port:
                continue
            data = os.path.join(self.dir, "data")
            shutil.rmtree(data, ignore_errors=True)
            url, purl = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
            argv = [ETCD_BIN, "--name", "pb", "--data-dir", data,
                    "--listen-client-urls", url, "--advertise-client-urls", url,
                    "--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
                    "--initial-cluster", f"pb={purl}", "--initial-cluster-state", "new",
                    "--initial-cluster-token", f"pb-{os.getpid()}-{self.port}",
                    "--logger", "zap", "--log-level", "warn", *extra]
            self.proc = Proc(argv, os.path.join(SCRATCH, "logs", f"etcd-{self.tag}-{os.getpid()}.log"))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self.proc.alive():
                    break  # lost a port race: try other ports
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                        if b"true" in r.read():
                            return self
                except OSError:
                    pass
                time.sleep(0.05)
            self.proc.stop(grace=2)
        raise RuntimeError(f"etcd did not start; see {SCRATCH}/logs/etcd-{self.tag}-{os.getpid()}.log")

    def metrics(self):
        """etcd's own counters (from /metrics) that say how much work it did."""
        wanted = {
            "etcd_debugging_mvcc_current_revision": "revision",
            "etcd_debugging_mvcc_put_total": "puts",
            "etcd_debugging_mvcc_delete_total": "deletes",
            "etcd_debugging_mvcc_txn_total": "mvcc_txns",
            "etcd_debugging_mvcc_range_total": "ranges",
            "etcd_debugging_mvcc_events_total": "watch_events",
            "etcd_debugging_mvcc_keys_total": "keys",
            "etcd_debugging_mvcc_total_put_size_in_bytes": "put_bytes",
            "etcd_server_proposals_committed_total": "raft_proposals",
            "etcd_disk_wal_fsync_duration_seconds_count": "wal_fsyncs",
            "etcd_disk_wal_write_bytes_total": "wal_bytes",
            "etcd_disk_backend_commit_duration_seconds_count": "backend_commits",
            "etcd_mvcc_db_total_size_in_bytes": "db_size_bytes",
            "etcd_mvcc_db_total_size_in_use_in_bytes": "db_in_use_bytes",
        }
        out = {}
        with urllib.request.urlopen(f"http://{self.endpoint}/metrics", timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, _, value = line.rpartition(" ")
            if name in wanted:
                out[wanted[name]] = float(value)
            elif name.startswith("grpc_server_handled_total{") and 'grpc_type="unary"' in name:
                method = name.split('grpc_method="', 1)[1].split('"', 1)[0]
                out[f"rpc_{method}"] = out.get(f"rpc_{method}", 0.0) + float(value)
        return out

    def stop(self):
        if self.proc is not None:
            self.proc.stop(grace=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- conductors --------------------------------------------------------------------------------

def node_root(kind, tag):
    if kind == "tmpfs":
        return tempfile.mkdtemp(prefix=f"peerbench-cnodes-{tag}-", dir="/dev/shm")
    root = os.path.join(SCRATCH, "cnodes")
    os.makedirs(root, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{tag}-{os.getpid()}-", dir=root)


def file_create_us(directory, n=300):
    """CPU microseconds to create (and close) one empty file in `directory`, as a task's log is."""
    probe = tempfile.mkdtemp(prefix="create-probe-", dir=directory)
    try:
        t0 = time.process_time()
        for i in range(n):
            os.close(os.open(os.path.join(probe, f"{i}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        return round((time.process_time() - t0) / n * 1e6, 1)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


class Cluster:
    """etcd + `conductor run` processes; a context manager that always stops what it started."""

    def __init__(self, tag, count, slots="1", ttl=None, node_dir="disk", names=None):
        self.tag = tag
        self.names = names or [f"c{i + 1}" for i in range(count)]
        self.slots = slots
        self.ttl = ttl
        self.node_kind = node_dir
        self.etcd = Etcd(tag)
        self.root = None
        self.procs = {}
        self.clients = []

    def __enter__(self):
        try:
            self.etcd.start()
            self.root = node_root(self.node_kind, self.tag)
            self.create_us = file_create_us(self.root)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def start_node(self, name, slots=None, ttl=None):
        slots = self.slots if slots is None else slots
        ttl = self.ttl if ttl is None else ttl
        data = os.path.join(self.root, name)
        os.makedirs(data, exist_ok=True)
        argv = [*CONDUCTOR_CMD, "run", "--etcd", self.etcd.endpoint, "--namespace", NAMESPACE,
                "--name", name, "--data-dir", data]
        if slots not in (None, "default"):
            argv += ["--slots", str(slots)]
        if ttl is not None:
            argv += ["--ttl", str(ttl)]
        log = os.path.join(SCRATCH, "logs", f"conductor-{self.tag}-{name}-{os.getpid()}.log")
        p = Proc(argv, log, cwd=data)
        self.procs[name] = p
        return p

    def start(self, timeout=60.0):
        for name in self.names:
            self.start_node(name)
        self.wait_ready(self.names, timeout)

    def client(self):
        from conductor import Client
        c = Client(etcd=self.etcd.endpoint, namespace=NAMESPACE)
        self.clients.append(c)
        return c

    def wait_ready(self, names, timeout=60.0):
        c = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for n in names:
                if not self.procs[n].alive():
                    raise RuntimeError(f"conductor {n} exited early; see {self.procs[n].log_path}")
            live = {n.get("name") for n in c.nodes()}
            if set(names) <= live:
                return
            time.sleep(0.05)
        raise TimeoutError(f"conductors {names} not registered after {timeout}s")

    def close(self):
        for c in self.clients:
            try:
                c.close()
            except Exception:
                pass
        self.clients.clear()
        # SIGTERM every conductor at once (each hands back its tasks and revokes its lease),
        # then wait; Proc.stop kills the whole tree if one does not stop in time.
        for p in self.procs.values():
            if p.alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs.values():
            p.stop(grace=15)
        self.procs.clear()
        self.etcd.stop()
        if self.root and self.node_kind == "tmpfs":
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- measurements ------------------------------------------------------------------------

    def pids(self):
        out = {"etcd": self.etcd.proc.pid}
        out.update({n: p.pid for n, p in self.procs.items()})
        return out

    def cpu(self):
        """CPU seconds so far: etcd; each conductor's own threads, its helper processes (every
        descendant running conductor code: the supervisor that spawns and reaps the tasks, the web
        server) and the tasks they reaped; this client process."""
        me = os.times()
        out = {"client": me.user + me.system}
        for name, pid in self.pids().items():
            out.update(_node_cpu(name, pid))
        return out

    def rss(self):
        """(current RSS, peak RSS = VmHWM) in MiB of etcd and of each conductor."""
        out = {}
        for name, pid in self.pids().items():
            try:
                with open(f"/proc/{pid}/status") as f:
                    st = dict(line.split(":", 1) for line in f if ":" in line)
                out[name] = {"rss_mib": round(int(st["VmRSS"].split()[0]) / 1024, 1),
                             "peak_rss_mib": round(int(st["VmHWM"].split()[0]) / 1024, 1)}
            except (OSError, KeyError, ValueError):
                pass
        return out

    def start_profilers(self, out_dir, rate=250, gil=False):
        spy = os.path.join(VENV_BIN, "py-spy")
        os.makedirs(out_dir, exist_ok=True)
        spies = []
        for name, p in self.procs.items():
            argv = [spy, "record", "--pid", str(p.pid), "--rate", str(rate), "--format", "raw",
                    "--threads", "--nonblocking", "-o", os.path.join(out_dir, f"{name}.txt")]
            if gil:
                argv.append("--gil")
            spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        time.sleep(1.0)
        return spies


def stop_profilers(spies):
    for s in spies:
        if s.poll() is None:
            s.send_signal(signal.SIGINT)
    for s in spies:
        try:
            s.wait(timeout=30)
        except subprocess.TimeoutExpired:
            s.kill()
            s.wait(timeout=5)


def _node_cpu(name, pid):
    import psutil
    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        kids = p.children(recursive=True)
    except psutil.Error:
        return {}
    if name == "etcd":
        return {name: t.user + t.system}
    helpers, tasks = 0.0, t.children_user + t.children_system
    for k in kids:
        try:
            if "conductor" in " ".join(k.cmdline()):
                kt = k.cpu_times()
                helpers += kt.user + kt.system
                tasks += kt.children_user + kt.children_system
        except psutil.Error:
            pass
    return {name: t.user + t.system, f"{name}.helpers": helpers, f"{name}.tasks": tasks}


def cpu_delta(a, b):
    return {k: round(b[k] - a.get(k, 0.0), 3) for k in b}


def per_task(a, b, n):
    return {k: round((b[k] - a.get(k, 0.0)) / n, 3) for k in b
            if k not in ("db_size_bytes", "db_in_use_bytes", "keys") and b[k] - a.get(k, 0.0)}


def cost_summary(cpu, etcd0, etcd1, n, names):
    """CPU and etcd work per task for a timed part that ran n tasks (names: the conductors)."""
    conductors = sum(cpu.get(k, 0.0) for k in names)
    tasks = sum(v for k, v in cpu.items() if k.endswith(".tasks"))
    helpers = sum(v for k, v in cpu.items() if k.endswith(".helpers"))
    return {
        "cpu_s": cpu,
        "cpu_ms_per_task": {"conductors": round(1e3 * conductors / n, 3),
                            "etcd": round(1e3 * cpu.get("etcd", 0.0) / n, 3),
                            "task_processes": round(1e3 * tasks / n, 3),
                            "helpers": round(1e3 * helpers / n, 3),
                            "client": round(1e3 * cpu.get("client", 0.0) / n, 3),
                            # the issue-13 row: everything but the tasks' own processes
                            "total": round(1e3 * (conductors + helpers + cpu.get("etcd", 0.0)
                                                  + cpu.get("client", 0.0)) / n, 3)},
        "etcd_per_task": per_task(etcd0, etcd1, n),
        "etcd_db_size_mib": round(etcd1.get("db_size_bytes", 0) / 2**20, 2),
    }


def true_job(name, sizes):
    """A job of layers of `true` tasks, one layer per order."""
    return {"name": name,
            "layers": [{"name": f"l{i}", "order": i,
                        "tasks": [{"name": f"t{j}", "cmd": ["true"]} for j in range(n)]}
                       for i, n in enumerate(sizes)]}


def settings(cl, args_slots):
    return {"system": "conductor", "slots_per_node": args_slots, "nodes": len(cl.names),
            "ttl": cl.ttl if cl.ttl is not None else "default (10)", "node_dir": cl.node_kind,
            "file_create_us": cl.create_us}
