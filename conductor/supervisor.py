"""The supervisor: a small process beside each conductor that starts, waits for and fences its tasks,
and keeps the node's lease alive.

Why a process of its own (see docs/design.md, "The supervisor"):

* **Fenced from before it exists.** The supervisor itself creates every task process
  (``posix_spawn``), so there is no instant at which a task runs and the fence does not know it. When
  the conductor dies, even by ``kill -9``, its end of the socket closes: the supervisor kills every
  task (and every process they left behind: it is a child subreaper, so orphans come to it), waits
  until they are gone, revokes the lease so other nodes take the tasks over at once, and exits.
* **Renewals that never wait on the conductor.** The lease keepalive runs here, in a thread of a
  process that does nothing else, so a busy conductor (or a loaded machine) does not delay it. The
  fence deadline is (time the last confirmed renewal was sent) + TTL - margin: when it passes, every
  task is killed before etcd can expire the lease and let another node start the same task. The
  conductor must show it is alive (a ping every fraction of a second); a conductor that is stopped
  or stuck for longer than ``heartbeat`` is not renewed for, so its lease runs out as if it had died.
* **Starts off the conductor's interpreter lock.** ``posix_spawn`` holds the calling interpreter's
  lock until the child has exec'd; here that stalls nobody.

Wire: frames of a 4-byte big-endian length and a pickled tuple over a socketpair (both ends are
this package's own code). Conductor -> supervisor: ``hello``, ``lease``, ``spawn``, ``kill``,
``killall``, ``container``, ``ping``, ``close``. Supervisor -> conductor: ``started``, ``exited``,
``renewed``, ``lost``, ``expired``, ``closed``, ``log``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import heapq
import http.client
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .masking import Masker

_HEADER = struct.Struct(">I")
PR_SET_CHILD_SUBREAPER = 36
# a task starts with every signal at its default action, even those the conductor ignores or
# inherited ignored (SIGPIPE from Python, SIGHUP from nohup, SIGINT from a background shell)
DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def frame(message: tuple) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


def unframe(buffer: bytearray) -> list[tuple]:
    """Take every whole frame off the front of ``buffer``."""
    out = []
    while len(buffer) >= 4:
        (size,) = _HEADER.unpack_from(buffer)
        if len(buffer) < 4 + size:
            break
        out.append(pickle.loads(bytes(buffer[4:4 + size])))
        del buffer[:4 + size]
    return out


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init (Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


_sealed = False


def seal_inherited_fds() -> None:
    """Make every descriptor above 2 close-on-exec, so a task gets only its stdio. What Python and
    gRPC open already is; this catches what the process inherited from whoever started it."""
    global _sealed
    _sealed = True
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the listing's own descriptor, closed by now
                pass


def spawn(argv: list[str], env: dict[str, str], cwd: str | None, log_path: str, out_fd: int | None = None) -> int:
    """Start ``argv`` as the leader of a new session, stdin from /dev/null, stdout and stderr to
    ``log_path`` (created or truncated), or to ``out_fd`` (a masking pipe). The executable is looked up on the task's own PATH; a
    missing one raises FileNotFoundError naming it. Returns the pid (= its process group)."""
    if not _sealed:
        seal_inherited_fds()
    home = None
    if cwd and cwd != os.getcwd():
        home = os.getcwd()
        os.chdir(cwd)  # posix_spawn cannot change directory; only the spawning thread uses cwd
    try:
        path = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH", os.defpath))
        if path is None:
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        stdout = ((os.POSIX_SPAWN_DUP2, out_fd, 1) if out_fd is not None
                  else (os.POSIX_SPAWN_OPEN, 1, log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), stdout, (os.POSIX_SPAWN_DUP2, 1, 2)]
        return os.posix_spawn(path, argv, env, file_actions=actions, setsid=True, setsigmask=(),
                              setsigdef=DEFAULT_SIGNALS)
    finally:
        if home is not None:
            os.chdir(home)


def descendants(pid: int | None = None) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def signal_tree(pid: int, sig: int) -> None:
    """``sig`` to the task's process group and to every descendant of its leader."""
    victims = descendants(pid)
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for p in victims:
        try:
            p.send_signal(sig)
        except Exception:  # noqa: BLE001 - gone already
            pass


def remove_container(docker_host: str, name: str) -> None:
    """Kill and remove a container by name through the Docker API (stdlib only)."""
    if not docker_host:
        return
    try:
        if docker_host.startswith("unix://"):
            conn: http.client.HTTPConnection = _UnixConnection(docker_host[len("unix://"):])
        else:
            conn = http.client.HTTPConnection(docker_host.split("://", 1)[-1], timeout=5)
        conn.request("DELETE", f"/containers/{name}?force=true&v=true")
        conn.getresponse().read()
        conn.close()
    except OSError as exc:
        _say(f"cannot remove container {name}: {exc}")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=5)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.unix_path)


def _say(text: str) -> None:
    print(f"conductor supervisor: {text}", file=sys.stderr, flush=True)


@dataclass
class Task:
    handle: str
    pid: int
    why: str | None = None  # why we signalled it first: "timeout", "fenced", or the conductor's word
    masker: Masker | None = None  # copies its output to its log with secrets masked


class Supervisor:
    """The loop. One thread does everything but the lease keepalive (see :class:`Renewer`)."""

    def __init__(self, sock: socket.socket, config: dict[str, Any]):
        self.sock = sock
        self.config = config
        self.ttl = float(config.get("ttl", 10))
        self.margin = max(0.5, self.ttl / 4)
        self.heartbeat = float(config.get("heartbeat", max(0.5, (self.ttl - self.margin) * 2 / 3)))
        self.docker_host = str(config.get("docker_host") or "")
        self.tasks: dict[int, Task] = {}  # pid -> task
        self.handles: dict[str, int] = {}  # handle -> pid
        self.containers: set[str] = set()
        self.timers: list[tuple[float, int, str, str, Any]] = []
        self._seq = 0
        self.lock = threading.Lock()  # lease and deadline, shared with the renewer
        self.lease = 0
        self.deadline = float("inf")
        self.fenced = False
        self.last_ping = time.monotonic()
        self.out = bytearray()
        self.inbox = bytearray()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.closing = False
        self.renewer: Renewer | None = None

    # ---- output ----------------------------------------------------------------------------------

    def send(self, *message: Any) -> None:
        """Queue a message for the conductor; never blocks (a stopped conductor must not stall us)."""
        with self.lock:
            self.out += frame(message)
        self.wake()

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _flush(self) -> bool:
        """Send what is queued; False when the conductor's end is closed (it died)."""
        with self.lock:
            if not self.out:
                return True
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:  # EPIPE, ECONNRESET: the conductor is gone
                self.out.clear()
                return False
            del self.out[:sent]
            return True

    # ---- the loop --------------------------------------------------------------------------------

    def run(self) -> None:
        self.sock.setblocking(False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *a: None)
        while True:
            timeout = self._next_wait()
            with self.lock:
                want_write = bool(self.out)
            watched: list[Any] = [self.sock, self.wake_r]
            readable, _, _ = select.select(watched, [self.sock] if want_write else [], [], timeout)
            if self.wake_r in readable:
                try:
                    while os.read(self.wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            self._reap()
            if self.sock in readable and not self._receive():
                self._conductor_gone()
                return
            self._due_timers()
            self._check_deadline()
            # send now what this turn queued (an exit just reaped), not after another turn of select
            if not self._flush():
                self._conductor_gone()
                return
            if self.closing and not self.tasks:
                self._flush_all()
                return

    def _next_wait(self) -> float:
        now = time.monotonic()
        until = min([self.deadline] + [t[0] for t in self.timers[:1]])
        return max(0.0, min(until - now, 1.0))

    def _receive(self) -> bool:
        try:
            chunk = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not chunk:
            return False
        self.inbox += chunk
        for message in unframe(self.inbox):
            try:
                self.handle(message)
            except Exception as exc:  # noqa: BLE001 - a bad message must not stop the fence
                _say(f"message {message[0]!r} failed: {exc!r}")
        return True

    def handle(self, message: tuple) -> None:
        op, *args = message
        self.last_ping = time.monotonic()  # every message shows the conductor is alive
        if op == "spawn":
            self._spawn(*args)
        elif op == "kill":
            self._kill(*args)
        elif op == "killall":
            why, tag = args
            self.kill_all(why, tag)
        elif op == "lease":
            self._set_lease(*args)
        elif op == "container":
            name, add = args
            (self.containers.add if add else self.containers.discard)(name)
        elif op == "close":
            self._close(bool(args[0]) if args else True)

    # ---- tasks -----------------------------------------------------------------------------------

    def _spawn(self, handle: str, argv: list[str], env: dict[str, str], cwd: str | None, log_path: str,
               timeout: float | None, grace: float, secrets: list[str] | None = None) -> None:
        if self.fenced or self.closing:
            self.send("exited", handle, None, 0.0, time.time(), "fenced")
            return
        masker = Masker(secrets, log_path) if secrets else None
        try:
            pid = spawn(argv, env, cwd, log_path, masker.write_fd if masker else None)
        except (OSError, ValueError) as exc:
            if masker is not None:
                masker.started()
            reason = getattr(exc, "strerror", None) or str(exc)
            if isinstance(exc, OSError) and exc.filename:
                reason += f": {exc.filename}"
            self.send("exited", handle, None, 0.0, time.time(), f"start_failed:{reason}")
            return
        if masker is not None:
            masker.started()
        self.tasks[pid] = Task(handle, pid, masker=masker)
        self.handles[handle] = pid
        self.send("started", handle, pid, time.time())
        if timeout:
            self._timer(timeout, "timeout", handle, grace)

    def _kill(self, handle: str, why: str, grace: float) -> None:
        pid = self.handles.get(handle)
        if pid is None:
            return
        task = self.tasks[pid]
        task.why = task.why or why
        signal_tree(pid, signal.SIGTERM)
        self._timer(max(0.0, grace), "sigkill", handle, None)

    def _timer(self, delay: float, kind: str, handle: str, arg: Any) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self._seq, kind, handle, arg))

    def _due_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, kind, handle, arg = heapq.heappop(self.timers)
            pid = self.handles.get(handle)
            if pid is None:
                continue
            if kind == "timeout":
                self._kill(handle, "timeout", arg)
            elif kind == "sigkill":
                signal_tree(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            task = self.tasks.pop(pid, None)
            if task is None:
                continue  # a descendant re-parented to us (we are a subreaper): just reaped
            self.handles.pop(task.handle, None)
            try:
                os.killpg(pid, signal.SIGKILL)  # whatever is left of its group
            except (ProcessLookupError, PermissionError):
                pass
            if task.masker is not None:
                task.masker.finish()  # the log holds all the task wrote before the conductor reads it
            self.send("exited", task.handle, status, usage.ru_utime + usage.ru_stime, time.time(), task.why)

    def kill_all(self, why: str, tag: str) -> None:
        """SIGKILL every task and every process they left behind, and the registered containers."""
        if self.tasks or self.containers:
            _say(f"killing {len(self.tasks)} task(s) and {len(self.containers)} container(s): {why}")
        for task in self.tasks.values():
            task.why = task.why or tag
            try:
                os.killpg(task.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in descendants():
            try:
                p.kill()
            except Exception:  # noqa: BLE001
                pass
        if self.containers:
            names = list(self.containers)
            threading.Thread(target=self._remove_containers, args=(names,), daemon=True).start()

    def _remove_containers(self, names: list[str]) -> None:
        for attempt in range(2):  # again a moment later: one may have been created as we looked
            for name in names:
                remove_container(self.docker_host, name)
            time.sleep(1.0)

    # ---- lease and fence -------------------------------------------------------------------------

    def _set_lease(self, lease: int, sent: float) -> None:
        with self.lock:
            self.lease = lease
            self.deadline = sent + self.ttl - self.margin
            self.fenced = False
        if self.renewer is not None:
            self.renewer.poke()

    def renewed(self, lease: int, sent: float, rtt: float, ttl_left: int) -> None:
        with self.lock:
            if lease != self.lease:
                return
            self.deadline = max(self.deadline if not self.fenced else 0.0, sent + self.ttl - self.margin)
            was_fenced, self.fenced = self.fenced, False
        self.send("renewed", lease, round(rtt * 1000, 2), ttl_left, was_fenced)

    def expired(self, lease: int) -> None:
        with self.lock:
            if lease != self.lease:
                return
            self.lease = 0
            self.deadline = time.monotonic()  # gone: nothing of it may run a moment longer
        self.wake()
        self.send("expired", lease)

    def _check_deadline(self) -> None:
        with self.lock:
            due = not self.fenced and time.monotonic() >= self.deadline
            if due:
                self.fenced = True
                self.deadline = float("inf")  # nothing more to wait for until a renewal comes back
        if due:
            self.kill_all("the lease was not renewed in time (self-fencing)", "fenced")
            self.send("lost", "no lease renewal in time")

    # ---- endings ---------------------------------------------------------------------------------

    def _close(self, revoke: bool) -> None:
        self.closing = True
        self.kill_all("the conductor is stopping", "killed")
        self._wait_gone(5.0)
        if revoke and self.renewer is not None:
            self.renewer.revoke()
        self.send("closed")

    def _flush_all(self) -> None:
        self.sock.setblocking(True)
        self.sock.settimeout(2.0)
        try:
            with self.lock:
                self.sock.sendall(self.out)
                self.out.clear()
        except OSError:
            pass

    def _conductor_gone(self) -> None:
        """The conductor died (or closed its end): nothing of its may run on. Kill, then make sure
        the tasks are gone before the lease is revoked and other nodes take them over."""
        self.kill_all("the conductor is gone", "killed")
        self._wait_gone(10.0)
        if self.renewer is not None:
            self.renewer.revoke()

    def _wait_gone(self, limit: float) -> None:
        end = time.monotonic() + limit
        while (self.tasks or descendants()) and time.monotonic() < end:
            for p in descendants():
                try:
                    p.kill()
                except Exception:  # noqa: BLE001
                    pass
            self._reap()
            time.sleep(0.01)


class Renewer(threading.Thread):
    """Keeps the lease alive: every TTL/3 (every 0.5 s while failing), only while the conductor
    has been heard from within ``heartbeat`` seconds."""

    def __init__(self, sup: Supervisor):
        super().__init__(name="renewer", daemon=True)
        self.sup = sup
        self._poke = threading.Event()
        self.store: Any = None
        self._silent_said = False

    def poke(self) -> None:
        self._poke.set()

    def _store(self) -> Any:
        if self.store is None:
            from .credentials import Credentials
            from .store import Store

            self.store = Store(self.sup.config["endpoints"], timeout=float(self.sup.config.get("timeout", 5.0)),
                               credentials=Credentials.from_config(self.sup.config.get("credentials")))
        return self.store

    def run(self) -> None:
        try:  # a higher priority for this thread only (nice is per thread on Linux; tasks don't inherit it)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -5)
        except (OSError, AttributeError):
            pass
        sup = self.sup
        try:  # gRPC loaded and a channel made before any lease is ours to keep: the first renewal is not late
            self._store()
        finally:
            sup.send("ready")
        period = sup.ttl / 3.0
        failing = False
        while not sup.closing:
            self._poke.wait(min(0.5, period) if failing else period)
            self._poke.clear()
            with sup.lock:
                lease, deadline = sup.lease, sup.deadline
            if not lease:
                continue
            silent = time.monotonic() - sup.last_ping
            if silent > sup.heartbeat:
                if not self._silent_said:
                    _say(f"the conductor has not been heard from for {silent:.1f}s; not renewing its lease")
                    self._silent_said = True
                failing = True
                continue
            self._silent_said = False
            failing = not self._renew_once(lease, deadline, period)

    def _renew_once(self, lease: int, deadline: float, period: float) -> bool:
        from .errors import StoreError

        sent = time.monotonic()
        try:
            # wait for an answer as long as it can still move the deadline: on a loaded machine a
            # slow answer is still a renewal (the deadline counts from when it was sent)
            left = self._store().keepalive(lease, timeout=min(max(0.5, deadline - sent), self.sup.ttl))
        except StoreError:
            return False
        if left > 0:
            self.sup.renewed(lease, sent, time.monotonic() - sent, left)
            return True
        self.sup.expired(lease)
        return False

    def revoke(self) -> None:
        with self.sup.lock:
            lease, self.sup.lease = self.sup.lease, 0
        if lease:
            try:
                self._store().revoke(lease, timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - it expires by itself then
                _say(f"could not revoke the lease: {exc}")


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    seal_inherited_fds()
    become_subreaper()
    sock.setblocking(True)
    buffer = bytearray()
    while True:  # the first message is the configuration
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk
        messages = unframe(buffer)
        if messages:
            break
    op, config = messages[0]
    sup = Supervisor(sock, config)
    sup.inbox = buffer
    sup.renewer = Renewer(sup)
    sup.renewer.start()
    try:
        for message in messages[1:]:
            sup.handle(message)
        sup.run()
    except BaseException as exc:  # the fence's own failure: nothing it started may outlive it
        _say(f"failed ({exc!r}); killing every task before leaving")
        sup._conductor_gone()
        raise


if __name__ == "__main__":
    main()
