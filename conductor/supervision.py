"""The conductor's end of its supervisor process (:mod:`conductor.supervisor`).

The conductor asks, the supervisor does: start a task, signal it, keep a lease alive, kill
everything. Answers and news come back as events, dispatched from one reader thread to the
handlers the node registers. A pinger thread tells the supervisor the conductor is alive; a
conductor that stops pinging (stopped, stuck) loses its lease as if it had died.

Thread-safe: any thread may call any method.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Callable

from .errors import ConductorError
from .exitcodes import Exit
from .supervisor import become_subreaper, descendants, frame, unframe
from .threadname import name_this_thread

log = logging.getLogger("conductor.supervision")

Handler = Callable[..., None]
KEEP_PIDS: set[int] = set()  # children of this process that are not tasks (a local etcd): never killed


class SupervisorGone(ConductorError):
    """The supervisor process died (or never started) while the conductor still needed it."""

    exit_code = Exit.SUPERVISOR_LOST


class Supervision:
    def __init__(self, endpoints: list[str], ttl: int, timeout: float = 5.0, docker_host: str = "",
                 credentials: dict[str, Any] | None = None):
        # sent over the socket pair, never on a command line: it may hold the etcd password
        self.config = {"endpoints": list(endpoints), "ttl": ttl, "timeout": timeout, "docker_host": docker_host,
                       "credentials": credentials or {}}
        margin = max(0.5, ttl / 4)
        self.heartbeat = max(0.5, (ttl - margin) * 2 / 3)
        self.config["heartbeat"] = self.heartbeat
        self.handlers: dict[str, Handler] = {}
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._send_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = threading.Event()
        self._ready = threading.Event()
        self.on_gone: Callable[[], None] = lambda: None
        self.on_error: Callable[[BaseException], None] = lambda exc: None

    def on(self, event: str, handler: Handler) -> None:
        """Call ``handler(*args)`` for each ``event`` (started, exited, renewed, lost, expired)."""
        self.handlers[event] = handler

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        become_subreaper()  # if the supervisor dies, its tasks come to us and we can kill them
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._proc = subprocess.Popen([sys.executable, "-m", "conductor.supervisor", str(theirs.fileno())],
                                      pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                      start_new_session=True, close_fds=True)
        theirs.close()
        self._sock = mine
        self._send(("hello", self.config))
        threading.Thread(target=self._read, name="supervision", daemon=True).start()
        threading.Thread(target=self._ping, name="heartbeat", daemon=True).start()
        if not self._ready.wait(60):  # its renewer is set up: a lease given to it now is renewed in time
            raise SupervisorGone("the supervisor process did not start within 60 s")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def close(self, revoke: bool = True, timeout: float = 15.0) -> None:
        """Kill what is left, revoke the lease (if asked) and end the supervisor."""
        if self._closing.is_set():
            return
        self._closing.set()
        try:
            self._send(("close", revoke))
        except SupervisorGone:
            pass
        self._closed.wait(timeout)
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    # ---- requests ------------------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        data = frame(message)
        with self._send_lock:
            if self._sock is None:
                raise SupervisorGone("the supervisor is not running")
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise SupervisorGone(f"the supervisor is gone: {exc}") from None

    def lease(self, lease_id: int, sent: float) -> None:
        """Keep ``lease_id`` alive from now on; it was granted by a request sent at ``sent``."""
        self._send(("lease", lease_id, sent))

    def spawn(self, handle: str, argv: list[str], env: dict[str, str], cwd: str | None, log_path: str,
              timeout: float | None, grace: float, secrets: list[str] | None = None) -> None:
        """Start a task; ``started``/``exited`` events follow (``exited`` with why ``start_failed:...``
        when it could not start). ``timeout`` kills it (SIGTERM, SIGKILL after ``grace``). Its output
        goes through :class:`conductor.masking.Masker` when it has ``secrets``."""
        self._send(("spawn", handle, argv, env, cwd, log_path, timeout, grace, secrets or None))

    def kill(self, handle: str, why: str, grace: float) -> None:
        """SIGTERM to the task's group and descendants now, SIGKILL after ``grace`` seconds."""
        self._send(("kill", handle, why, grace))

    def kill_all(self, why: str, tag: str = "killed") -> None:
        self._send(("killall", why, tag))

    def container(self, name: str, add: bool) -> None:
        """Register a container (by name, before it is created) to be removed if the node is fenced."""
        self._send(("container", name, add))

    # ---- threads -----------------------------------------------------------------------------------

    def _ping(self) -> None:
        name_this_thread()
        try:  # this thread alone, where allowed: the supervisor renews the lease only while it hears us
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -5)
        except (OSError, AttributeError):
            pass
        while not self._closing.wait(self.heartbeat / 5):
            try:
                self._send(("ping",))
            except SupervisorGone:
                return

    def _read(self) -> None:
        name_this_thread()
        assert self._sock is not None
        buffer = bytearray()
        while True:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            for op, *args in unframe(buffer):
                if op == "closed":
                    self._closed.set()
                    continue
                if op == "ready":
                    self._ready.set()
                    continue
                handler = self.handlers.get(op)
                if handler is None:
                    continue
                try:
                    handler(*args)
                except Exception as exc:  # a handler's bug is the node's: it stops, loudly
                    log.critical("handling the supervisor's %r failed", op, exc_info=exc)
                    self.on_error(exc)
        self._closed.set()
        self._ready.set()  # whoever waits for it learns of the death from the next request
        if not self._closing.is_set():
            self._gone()

    def _gone(self) -> None:
        """The supervisor died under us: its tasks were re-parented to this process (a subreaper).
        Kill all of them: nothing may run unfenced."""
        log.critical("the supervisor process died; killing every task of this node (self-fencing)")
        keep = {p.pid for k in KEEP_PIDS for p in descendants(k)} | KEEP_PIDS | {self.pid}
        for p in descendants(os.getpid()):
            if p.pid in keep:
                continue
            try:
                p.send_signal(signal.SIGKILL)
            except Exception:  # noqa: BLE001
                pass
        self.on_gone()
