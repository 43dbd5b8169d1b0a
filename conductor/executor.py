"""One attempt of one task on this node, as the conductor sees it.

The process itself is started, waited for, timed out and fenced by the node's supervisor process
(:mod:`conductor.supervisor`); a :class:`Run` asks for that and turns what comes back into an
outcome: exit code, usage, the log tail, the result file. Output (stdout and stderr together) goes
to a log file on the node; its last bytes become the stored tail. CPU time is the child's rusage
(its own and its waited descendants'); peak memory comes from psutil samples of the task's process
tree while it runs (each process's high-water mark), so a task shorter than the sampling period
reports none. Commands never go through a shell unless the spec says ``shell: true``.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, replace
from typing import Callable

import psutil

from .claims import Claimed
from .lifecycle import Cause, Outcome, kill_cause, kill_wins
from .model import now
from .supervision import Supervision
from .templates import mask

log = logging.getLogger("conductor.executor")

NODE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL")
FENCED = "self-fenced: the node lost its etcd session"


def task_env(claimed: Claimed, extra: dict[str, str], base: dict[str, str] | None = None) -> dict[str, str]:
    """The node's minimal environment, then the job's, layer's and task's env, then the ids."""
    source = os.environ if base is None else base
    env = {name: source[name] for name in NODE_ENV if name in source}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    task = claimed.task
    for layer_env in (claimed.job.get("env"), claimed.layer.get("env"), task.get("env")):
        env.update(layer_env or {})
    env.update(extra)
    env.update({"CONDUCTOR_JOB_ID": task["job"], "CONDUCTOR_LAYER_ID": task["layer"],
                "CONDUCTOR_TASK_ID": task["id"], "CONDUCTOR_ATTEMPT": str(task["attempts"])})
    return env


def argv_of(task: dict) -> list[str]:
    if task.get("shell"):
        return ["/bin/sh", "-c", *task["cmd"]]
    return list(task["cmd"])


def signal_name(number: int) -> str:
    """SIGTERM for 15; SIGRTMIN+6 and such (no enum member) as SIG40."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


@dataclass
class Limits:
    result_cap: int = 65536
    tail_cap: int = 8192
    grace: float = 10.0


@dataclass(frozen=True)
class KillIntent:
    """Why the conductor itself asked for a run to be stopped (a user, a shutdown, a lost session)."""

    reason: str
    cause: Cause


class Run:
    """One attempt of one task on this node. Its files are ``<scratch>.log`` (output, kept),
    ``<scratch>.result`` and ``<scratch>.spawn.json`` (removed once the outcome is committed)."""

    def __init__(self, claimed: Claimed, env: dict[str, str], scratch: str, cwd: str | None,
                 supervision: Supervision, limits: Limits, on_done: Callable[["Run", Outcome], None]):
        self.claimed = claimed
        self.env = env
        self.scratch = scratch
        self.cwd = cwd
        self.supervision = supervision
        self.limits = limits
        self.on_done = on_done
        self.handle = f"{claimed.id}#{claimed.task['attempts']}"
        self.argv: list[str] | None = None  # set when secrets were filled in at the last moment
        self.secrets: dict[str, str] = {}  # masked in everything stored
        self.log_path = f"{scratch}.log"  # plain strings: pathlib costs more than the syscalls
        self.result_path = f"{scratch}.result"
        self.spawn_path = f"{scratch}.spawn.json"
        self.pid: int | None = None
        self.started = 0.0
        self.peak_rss = 0
        self.intent: KillIntent | None = None
        self.done = False
        self.pushed = -1  # log size last pushed to etcd while running
        self.push_at = 0.0  # when to look at the log's size again
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.claimed.id

    def start(self) -> None:
        """Ask the supervisor to start the process; ``started`` and ``exited`` follow."""
        self.env["CONDUCTOR_RESULT"] = self.result_path
        self.env["CONDUCTOR_SPAWN"] = self.spawn_path
        self.started = now()
        self.supervision.spawn(self.handle, self.argv or argv_of(self.claimed.task), self.env, self.cwd,
                               self.log_path, self.claimed.task.get("timeout"), self.limits.grace,
                               [v for v in self.secrets.values() if v])

    def finish_unstarted(self, outcome: Outcome) -> None:
        """Hand on an outcome reached without starting the process (a cache hit, taskcache.py):
        its log and result are what the caller wrote to this run's files."""
        self.started = outcome.started or now()
        self._finish(outcome)

    def on_started(self, pid: int) -> None:
        self.pid = pid

    def on_exited(self, status: int | None, cpu: float, ended: float, why: str | None) -> None:
        """The supervisor reaped the process (or could not start it): build and hand on the outcome."""
        ended = round(ended, 3)
        if why and why.startswith("start_failed:"):
            self._finish(Outcome(Cause.START_FAILED, f"cannot start: {why.split(':', 1)[1]}", None, self.started,
                                 ended))
            return
        code = os.waitstatus_to_exitcode(status) if status is not None else -int(signal.SIGKILL)
        self._finish(self._outcome(code, ended, cpu, why))

    def kill(self, reason: str = "killed", hand_back: bool = False, grace: float | None = None,
             stop: str | None = None, cause: Cause | None = None) -> None:
        """Stop the task: SIGTERM to its group and descendants, SIGKILL after the grace period.
        ``stop`` ("kill" or "skip") says a user asked for it, which decides the outcome; else
        ``hand_back`` or ``cause`` say what the run's end counts as (lifecycle.kill_cause)."""
        why = kill_cause(stop, hand_back, cause)
        with self._lock:
            if kill_wins(why, self.intent.cause if self.intent else None):
                self.intent = KillIntent(reason, why)
            if self.done:
                return
        self.supervision.kill(self.handle, "stop", self.limits.grace if grace is None else grace)

    def sample(self) -> None:
        """Record the peak RSS of the task's process tree so far (called a few times a second).

        On Linux each process's own high-water mark (VmHWM) is read, so one late sample still sees
        an earlier peak. rusage's maxrss is not used: after exec it still carries the forking
        parent's high-water mark."""
        if self.pid is None or self.done:
            return
        try:
            root = psutil.Process(self.pid)
            total = sum(_peak_rss(p) for p in [root, *root.children(recursive=True)])
            self.peak_rss = max(self.peak_rss, total)
        except psutil.Error:
            pass

    def _outcome(self, code: int, ended: float, cpu: float | None, why: str | None) -> Outcome:
        """The outcome of a run that exited with ``code`` (negative: killed by that signal)."""
        usage = {"cpu": None if cpu is None else round(cpu, 3), "max_rss": self.peak_rss or None,
                 "wall": round(ended - self.started, 3)}
        intent = self.intent
        if intent is not None:
            return Outcome(intent.cause, intent.reason, code, self.started, ended, usage)
        if why == "timeout":
            return Outcome(Cause.TIMEOUT, f"timed out after {self.claimed.task.get('timeout'):g}s", code,
                           self.started, ended, usage)
        if why == "fenced":
            return Outcome(Cause.FENCED, FENCED, code, self.started, ended, usage)
        if code < 0:
            return Outcome(Cause.SIGNAL, f"killed by signal {signal_name(-code)}", code, self.started,
                           ended, usage)
        return Outcome(Cause.EXIT, f"exit {code}", code, self.started, ended, usage)

    def _finish(self, outcome: Outcome) -> None:
        with self._lock:
            self.done = True
        tail, size = self._read_log()
        result, rsize = self._read_result()
        if rsize > self.limits.result_cap and (outcome.ok or outcome.is_failure):  # a stop keeps its cause
            outcome = replace(outcome, cause=Cause.RESULT_TOO_BIG, reason=(
                f"result is {rsize} bytes, over the cap of {self.limits.result_cap} bytes (exit {outcome.exit_code})"))
        self.on_done(self, replace(outcome, log_path=self.log_path, log_tail=tail, log_size=size,
                                   log_truncated=size > self.limits.tail_cap, result=result))

    def _read_log(self) -> tuple[bytes, int]:
        """The masked tail of the log and the log's size as the masked log would have it."""
        try:
            size = os.stat(self.log_path).st_size
            if not size:
                return b"", 0
            with open(self.log_path, "rb") as f:
                f.seek(max(0, size - self.limits.tail_cap))
                raw = f.read()
        except OSError:
            return b"", 0
        tail = mask(raw, self.secrets)
        return tail, size - (len(raw) - len(tail))

    def _read_result(self) -> tuple[bytes | None, int]:
        """The masked result (None if there is none or it is over the cap) and its size (-1: none)."""
        try:
            rsize = os.stat(self.result_path).st_size
            if rsize > self.limits.result_cap:
                return None, rsize
            with open(self.result_path, "rb") as f:
                return mask(f.read(), self.secrets), rsize
        except OSError:
            return None, -1

    def cleanup(self) -> None:
        """Remove the attempt's scratch files (the log stays on the node)."""
        for path in (self.result_path, self.spawn_path):
            try:
                os.unlink(path)
            except OSError:
                pass


def _peak_rss(p: psutil.Process) -> int:
    try:
        with open(f"/proc/{p.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0


__all__ = ["Run", "Limits", "KillIntent", "task_env", "argv_of"]
