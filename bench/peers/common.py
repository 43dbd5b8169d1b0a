"""Shared helpers for the peer benchmark (Celery / RQ / ceiling).

Everything here talks to loopback only.  Redis is expected on
127.0.0.1:$PEERBENCH_REDIS_PORT (default 6391), started by run.sh.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("PEERBENCH_REDIS_PORT", "6391"))
SCRATCH = os.environ.get("PEERBENCH_SCRATCH", "/tmp/conductor-peers")
VENV_BIN = os.path.dirname(sys.executable)

# Celery uses db base+0 (broker) and base+1 (results); RQ uses db base+2.
# PEERBENCH_DB_BASE lets a second experiment share the same redis-server.
DB_BASE = int(os.environ.get("PEERBENCH_DB_BASE", "0"))
CELERY_BROKER_DB = DB_BASE + 0
CELERY_RESULT_DB = DB_BASE + 1
RQ_DB = DB_BASE + 2


def redis_url(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def redis_client(db):
    import redis
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)


def flush_dbs(*dbs):
    for db in dbs:
        redis_client(db).flushdb()


def emit(result):
    """Print the one JSON line that is the script's result."""
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a list."""
    s = sorted(values)
    if not s:
        return None
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def median(values):
    return statistics.median(values)


class Proc:
    """A process we started, in its own session so we can kill the whole tree.

    start_new_session=True makes the child a process-group leader
    (pgid == pid); killpg(pid, ...) then reaches the worker's main process,
    its pool children, and anything they spawned (e.g. `sleep 30`).
    Only groups created here are ever signalled.
    """

    def __init__(self, argv, log_path, env=None, cwd=HERE):
        self.argv = argv
        self.log_path = log_path
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self.log = open(log_path, "ab")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  cwd=cwd, env=full_env, start_new_session=True)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def killpg(self, sig=signal.SIGKILL):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill_tree(self):
        """SIGKILL the whole worker: main process and every descendant.

        A process group is not enough: RQ's work horse calls setpgrp(), so it
        leaves the worker's group. We freeze the tree with SIGSTOP (so nothing
        forks or reparents while we look), collect all descendants from /proc,
        then SIGKILL every one of them. Returns the list of pids killed.
        """
        frozen = set()
        while True:
            tree = {self.pid} | descendants(self.pid)
            new = tree - frozen
            if not new:
                break
            for pid in new:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
            frozen |= new
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.killpg(signal.SIGKILL)
        return sorted(frozen)

    def stop(self, grace=10.0):
        """SIGTERM the group, wait `grace` s, then SIGKILL everything; reap.
        grace <= 0: SIGKILL the whole tree at once."""
        if grace <= 0 and self.alive():
            self.kill_tree()
        elif self.alive():
            self.killpg(signal.SIGTERM)
            try:
                self.p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # Make sure nothing survives: the group, and descendants that left it.
        if self.alive():
            self.kill_tree()
        else:
            for pid in descendants(self.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.killpg(signal.SIGKILL)
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


def descendants(root):
    """All live descendants of pid `root`, from /proc (Linux)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # field 4 (ppid) comes after the ")" that closes the command name
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def read_markers(path):
    """The JSON lines of a W3 start-marker file so far (none if it is missing or half-written)."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (FileNotFoundError, ValueError):
        return []


def wait_markers(path, count, timeout):
    """The first `count` markers once they are there, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = read_markers(path)
        if len(m) >= count:
            return m[:count]
        time.sleep(0.01)
    return None
