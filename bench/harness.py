"""Shared harness of the benchmarks: a private etcd, real conductor processes, clean-up.

Every benchmark is self-contained: it starts its own etcd on free loopback ports (never 2379) with
its data in a temporary directory, starts ``python -m conductor run`` processes against it (with
the interpreter running the benchmark, so any venv with conductor installed works), waits until
they are registered, and on the way out (normal end, exception, SIGTERM or Ctrl-C) stops the
conductors with SIGTERM, then etcd, and removes the temporary directory. What a run costs is
measured by :mod:`measure`.

With ``auth`` (``--auth`` on the benchmarks) the cluster is run as issue 10 has it: right after etcd
starts, ``conductor auth enable --admin benchadmin`` turns etcd's auth on, ``conductor user add
benchuser`` adds a user, the conductors run as the node account ``conductor``, and
:meth:`Cluster.client` acts as ``benchuser`` (:meth:`Cluster.admin_client` as ``benchadmin``, which
lists the nodes). The passwords are random, in files in the temporary directory.

Results go to stdout as one JSON object (:func:`emit`); everything else goes to stderr (:func:`say`).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ETCD = os.environ.get("BENCH_ETCD_BIN", "/usr/bin/etcd")
NAMESPACE = "/bench/"
BENCH_ADMIN, BENCH_USER, NODE_ACCOUNT = "benchadmin", "benchuser", "conductor"
# the caller's own cluster and credentials must not leak into the bench's processes
_CLUSTER_VARS = frozenset(f"CONDUCTOR_{v}" for v in ("ETCD", "NAMESPACE", "USER", "PASSWORD", "PASSWORD_FILE",
                                                     "CACERT", "CERT", "KEY"))
RESERVED_PORTS = {2379, 2380}


def say(*parts: Any) -> None:
    """Human chatter: stderr only, stdout is for the one JSON result."""
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=False), flush=True)


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


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

    def __init__(self, keep: bool = False, etcd_args: list[str] | None = None, node_dir: str = "tmpfs",
                 auth: bool = False):
        self.auth = auth
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
            if self.auth:
                self.enable_auth()
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

    # ---- etcd auth (issue 10) ------------------------------------------------------------------

    def password_file(self, account: str) -> Path:
        """Where ``account``'s password is (``node`` for the node account's)."""
        return self.tmp / f"{account}.password"

    def _cli(self, *args: str) -> None:
        """``python -m conductor ARGS --etcd ... --namespace ...``; raises RuntimeError on failure."""
        argv = [sys.executable, "-m", "conductor", *args, "--etcd", self.endpoint, "--namespace", NAMESPACE]
        env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"conductor {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")

    def enable_auth(self) -> None:
        """Turn etcd's auth on as ``conductor auth enable`` does, and add the bench's user. The node
        account's password file is written by ``auth enable`` itself (mode 0600)."""
        t0 = time.monotonic()
        for account in (BENCH_ADMIN, BENCH_USER):
            path = self.password_file(account)
            path.write_text(secrets.token_urlsafe(18) + "\n")
            path.chmod(0o600)
        admin = ["--user", BENCH_ADMIN, "--password-file", str(self.password_file(BENCH_ADMIN))]
        self._cli("auth", "enable", "--admin", BENCH_ADMIN,
                  "--admin-password-file", str(self.password_file(BENCH_ADMIN)),
                  "--node-password-file", str(self.password_file("node")))
        self._cli("user", "add", BENCH_USER, "--new-password-file", str(self.password_file(BENCH_USER)), *admin)
        say(f"etcd auth on: admin {BENCH_ADMIN}, user {BENCH_USER}, nodes as {NODE_ACCOUNT} "
            f"({time.monotonic() - t0:.1f}s)")

    def credentials(self, account: str) -> Any:
        from conductor.credentials import Credentials

        return Credentials(user=account, password_file=str(self.password_file(account)))

    # ---- conductors --------------------------------------------------------------------------

    def start_node(self, name: str, *, slots: int | None = None, ttl: int | None = None,
                   sweep: float | None = None, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
        data = self.node_root / name
        data.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "conductor", "run", "--etcd", self.endpoint, "--namespace", NAMESPACE,
                "--name", name, "--data-dir", str(data)]
        if slots:  # None or 0: the conductor's own default
            argv += ["--slots", str(slots)]
        if ttl is not None:
            argv += ["--ttl", str(ttl)]
        if sweep is not None:
            argv += ["--sweep", str(sweep)]
        if self.auth:
            argv += ["--user", NODE_ACCOUNT, "--password-file", str(self.password_file("node"))]
        argv += extra or []
        env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
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
        client = self.admin_client()
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
        """A Client on this cluster; with auth, acting as ``benchuser`` unless ``credentials`` are given."""
        from conductor import Client

        if self.auth:
            kwargs.setdefault("credentials", self.credentials(BENCH_USER))
        c = Client(etcd=self.endpoint, namespace=NAMESPACE, **kwargs)
        self._clients.append(c)
        return c

    def admin_client(self) -> Any:
        """A Client that may list the nodes: with auth, as ``benchadmin`` (users may not)."""
        return self.client(credentials=self.credentials(BENCH_ADMIN)) if self.auth else self.client()

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

    def kill_node(self, name: str, machine: bool = False) -> float:
        """SIGKILL one conductor; returns the wall-clock time of the kill. With ``machine``, its
        supervisor and every task with it, as when the machine is lost (then only the lease's expiry
        tells the others)."""
        import psutil

        proc = self.nodes[name]
        victims = psutil.Process(proc.pid).children(recursive=True) if machine else []
        at = time.time()
        for p in victims:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.kill()
        proc.wait()
        return at

    def close(self) -> None:
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
    p.add_argument("--auth", action="store_true",
                   help="turn etcd's auth on (conductor auth enable), run the conductors as the node account "
                        "and the bench's client as an ordinary user (issue 10)")
    return p
