"""Running one task: a supervised child in its own process group.

Output (stdout and stderr together) goes to a log file on the node; its last bytes become the
stored tail. CPU time is the child's rusage (its own and its waited descendants'); peak memory
comes from psutil samples of the task's process tree while it runs (each process's high-water
mark), so a task shorter than the sampling period reports none. A kill sends SIGTERM to the group and every descendant psutil can find, then SIGKILL after a
grace period; after the child exits, whatever is left of its group is killed, so a task leaves
nothing running behind it. Commands never go through a shell unless the spec says ``shell: true``.
"""
from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable

import psutil

from .claims import Claimed, Outcome
from .fence import Fence
from .lifecycle import Cause, kill_cause, kill_wins
from .model import now
from .templates import mask
from .threadname import name_this_thread

log = logging.getLogger("conductor.executor")

NODE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL")


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


@dataclass
class Child:
    """A started task process: its pid (which is also its process group) and, once reaped, its exit code."""

    pid: int
    returncode: int | None = None


def spawn(argv: list[str], env: dict[str, str], cwd: str | None, out: int) -> Child:
    """Start ``argv`` as the leader of a new session, stdin from /dev/null, stdout and stderr to ``out``.

    ``os.posix_spawn`` (vfork and exec in glibc) costs the conductor less than half the CPU of
    ``subprocess.Popen``. It cannot change directory, so a task with a working directory other than
    the conductor's own goes through Popen. Either way the child gets only fds 0-2: every descriptor
    Python or gRPC opens is close-on-exec. The executable is looked up on the task's own PATH, as
    Popen does, and a missing one raises FileNotFoundError naming it."""
    if not _sealed:
        _seal_inherited_fds()
    if cwd and cwd != os.getcwd():
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True, close_fds=True)
        proc.returncode = 0  # reaped by the Reaper, never by Popen: keep Popen from waiting on it
        return Child(proc.pid)
    path = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if path is None:
        raise FileNotFoundError(2, "No such file or directory", argv[0])
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, out, 2)]
    return Child(os.posix_spawn(path, argv, env, file_actions=actions, setsid=True, setsigmask=(),
                                setsigdef=_DEFAULT_SIGNALS))


_sealed = False
# a task starts with every signal at its default action, even those the conductor ignores or
# inherited ignored (SIGPIPE from Python, SIGHUP from nohup, SIGINT from a background shell)
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def _seal_inherited_fds() -> None:
    """Make every descriptor above 2 close-on-exec, once per process. What Python and gRPC open
    already is; this catches what the conductor inherited from whoever started it (a shell, a
    supervisor), which posix_spawn, unlike Popen(close_fds=True), would pass on to every task."""
    global _sealed
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed by now
                pass
    _sealed = True


@dataclass
class Limits:
    result_cap: int = 65536
    tail_cap: int = 8192
    grace: float = 10.0


class Reaper:
    """One thread that waits for every child process of a node.

    On Linux each child gets a pidfd watched by one epoll, so a node does not start a thread per
    task; where pidfds are missing, each child is waited for in a thread of its own instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[int, Callable[[int, Any], None]]] = {}
        self._epoll = select.epoll() if hasattr(select, "epoll") and hasattr(os, "pidfd_open") else None
        if self._epoll is not None:
            threading.Thread(target=self._loop, name="reaper", daemon=True).start()

    def watch(self, pid: int, done: Callable[[int, Any], None]) -> None:
        """Call ``done(status, rusage)`` (from another thread) once ``pid`` has exited."""
        if self._epoll is None:
            threading.Thread(target=lambda: done(*os.wait4(pid, 0)[1:]), name=f"wait-{pid}", daemon=True).start()
            return
        with self._lock:  # under the lock: a closed pidfd's number is reused at once
            fd = os.pidfd_open(pid)
            self._waiting[fd] = (pid, done)
            self._epoll.register(fd, select.EPOLLIN)

    def _loop(self) -> None:
        name_this_thread()
        assert self._epoll is not None
        while True:
            try:
                ready = self._epoll.poll(1.0)
            except InterruptedError:
                continue
            for fd, _ in ready:
                with self._lock:
                    entry = self._waiting.pop(fd, None)
                    if entry is None:
                        continue
                    self._epoll.unregister(fd)
                    os.close(fd)
                pid, done = entry
                try:
                    _, status, usage = os.wait4(pid, 0)
                    done(status, usage)
                except Exception:  # noqa: BLE001 - one task's trouble must not stop the reaper
                    log.exception("handling the exit of pid %d failed", pid)


class Run:
    """One attempt of one task on this node. Its files are ``<scratch>.log`` (output, kept),
    ``<scratch>.result`` and ``<scratch>.spawn.json`` (removed once the outcome is committed)."""

    def __init__(self, claimed: Claimed, env: dict[str, str], scratch: str, cwd: str | None,
                 fence: Fence, limits: Limits, on_done: Callable[["Run", Outcome], None],
                 reaper: Reaper | None = None):
        self.claimed = claimed
        self.env = env
        self.scratch = scratch
        self.cwd = cwd
        self.fence = fence
        self.limits = limits
        self.on_done = on_done
        self.reaper = reaper or Reaper()
        self.argv: list[str] | None = None  # set when secrets were filled in at the last moment
        self.secrets: dict[str, str] = {}  # masked in everything stored
        self.log_path = f"{scratch}.log"  # plain strings: pathlib costs more than the syscalls
        self.result_path = f"{scratch}.result"
        self.spawn_path = f"{scratch}.spawn.json"
        self.proc: Child | None = None
        self.started = 0.0
        self.peak_rss = 0
        self._kill: tuple[str, Cause] | None = None  # reason, cause
        self.pushed = -1  # log size last pushed to etcd while running
        self.push_at = 0.0  # when to look at the log's size again
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.claimed.id

    def start(self) -> None:
        """Start the child and have it waited for; failures to start become outcomes."""
        self.env["CONDUCTOR_RESULT"] = self.result_path
        self.env["CONDUCTOR_SPAWN"] = self.spawn_path
        self.started = now()
        try:
            with open(self.log_path, "wb") as out:
                self.proc = spawn(self.argv or argv_of(self.claimed.task), self.env, self.cwd, out.fileno())
        except (OSError, ValueError) as exc:
            reason = f"cannot start: {getattr(exc, 'strerror', None) or exc}"
            if isinstance(exc, FileNotFoundError) and exc.filename:
                reason += f": {exc.filename}"
            self._finish(Outcome(Cause.START_FAILED, reason, None, self.started, now()))
            return
        self.fence.add(self.proc.pid)
        self._arm_timeout()
        self.reaper.watch(self.proc.pid, self._exited_safely)

    def _arm_timeout(self) -> None:
        timeout = self.claimed.task.get("timeout")
        if timeout:
            self._timer = threading.Timer(timeout, self.kill, (f"timed out after {timeout:g}s",), {"cause": Cause.TIMEOUT})
            self._timer.daemon = True
            self._timer.start()

    def _exited_safely(self, status: int, usage: Any) -> None:
        self._safely(lambda: self._exited(status, usage))

    def _safely(self, step: Callable[[], None]) -> None:
        """Whatever goes wrong while supervising, the task gets an outcome and is never stuck."""
        self._finished = False
        try:
            step()
        except Exception as exc:  # noqa: BLE001
            log.exception("task %s: supervising it failed", self.id)
            if not self._finished:
                self._finish(Outcome(Cause.INTERNAL, f"conductor error while supervising: {exc!r}", None,
                                     self.started, now()))

    def kill(self, reason: str = "killed", hand_back: bool = False, grace: float | None = None,
             stop: str | None = None, cause: Cause | None = None) -> None:
        """Stop the task: SIGTERM to its group and descendants, SIGKILL after the grace period.
        ``stop`` ("kill" or "skip") says a user asked for it, which decides the outcome; else
        ``hand_back`` or ``cause`` say what the run's end counts as (lifecycle.kill_cause)."""
        why = kill_cause(stop, hand_back, cause)
        with self._lock:
            if kill_wins(why, self._kill[1] if self._kill else None):
                self._kill = (reason, why)
            proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        victims = self._tree(proc.pid)
        self._signal(proc.pid, victims, signal.SIGTERM)
        wait = self.limits.grace if grace is None else grace
        timer = threading.Timer(wait, self._signal, (proc.pid, victims, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    @staticmethod
    def _tree(pid: int) -> list[psutil.Process]:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return []

    @staticmethod
    def _signal(pgid: int, victims: list[psutil.Process], sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in victims:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass

    def sample(self) -> None:
        """Record the peak RSS of the task's process tree so far (called a few times a second).

        On Linux each process's own high-water mark (VmHWM) is read, so one late sample still sees
        an earlier peak. rusage's maxrss is not used: after exec it still carries the forking
        parent's high-water mark."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            root = psutil.Process(proc.pid)
            total = sum(_peak_rss(p) for p in [root, *root.children(recursive=True)])
            self.peak_rss = max(self.peak_rss, total)
        except psutil.Error:
            pass

    def _exited(self, status: int, usage: Any) -> None:
        assert self.proc is not None
        pid = self.proc.pid
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        ended = now()
        if self._timer:
            self._timer.cancel()
        self._signal(pid, [], signal.SIGKILL)  # anything left in its group
        self.fence.remove(pid)
        self._finish(self._outcome(self.proc.returncode, ended, usage.ru_utime + usage.ru_stime))

    def _outcome(self, code: int, ended: float, cpu: float | None) -> Outcome:
        """The outcome of a run that exited with ``code`` (negative: killed by that signal)."""
        usage = {"cpu": None if cpu is None else round(cpu, 3), "max_rss": self.peak_rss or None,
                 "wall": round(ended - self.started, 3)}
        if self._kill is not None:
            reason, cause = self._kill
            return Outcome(cause, reason, code, self.started, ended, usage)
        if code < 0:
            return Outcome(Cause.SIGNAL, f"killed by signal {signal.Signals(-code).name}", code, self.started,
                           ended, usage)
        return Outcome(Cause.EXIT, f"exit {code}", code, self.started, ended, usage)

    def _finish(self, outcome: Outcome) -> None:
        self._finished = True
        tail, size, result = b"", 0, None
        try:
            size = os.stat(self.log_path).st_size
            if size:
                with open(self.log_path, "rb") as f:
                    f.seek(max(0, size - self.limits.tail_cap))
                    raw = f.read()
                tail = mask(raw, self.secrets)
                size -= len(raw) - len(tail)  # sizes as the masked log would have them
        except OSError:
            pass
        try:
            rsize = os.stat(self.result_path).st_size
        except OSError:
            rsize = -1
        if rsize > self.limits.result_cap:
            if outcome.ok or outcome.is_failure:  # a user's stop or a disruption keeps its cause
                outcome = replace(outcome, cause=Cause.RESULT_TOO_BIG, reason=(
                    f"result is {rsize} bytes, over the cap of {self.limits.result_cap} bytes "
                    f"(exit {outcome.exit_code})"))
        elif rsize >= 0:
            with open(self.result_path, "rb") as f:
                result = mask(f.read(), self.secrets)
        self.on_done(self, replace(outcome, log_path=self.log_path, log_tail=tail, log_size=size,
                                   log_truncated=size > self.limits.tail_cap, result=result))

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
