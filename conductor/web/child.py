"""How a node hosts its web server: a ``conductor serve`` child process, so serving pages never
takes the node's interpreter (its GIL) from claiming and finishing tasks.

The node binds the listening socket itself (:meth:`WebChild.start_for`): an address already in use
is one log line and the node runs on without HTTP. The socket is handed to the child by file
descriptor; the etcd credentials (password included) go through the child's stdin as one JSON
line, never on its command line or in its environment. The child keeps reading its stdin: the
end of it means the node is gone (even after ``kill -9``), and the child exits.

This module imports no web library: the node stays as light as it was.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

from ..credentials import Credentials
from ..errors import InvalidSpec
from ..settings import NodeSettings

log = logging.getLogger("conductor.node")

DEFAULT_ADDRESS = "127.0.0.1:8420"
OFF = ("", "off", "none", "no")


def parse_address(text: str, option: str = "--http") -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` (``[::1]:PORT`` for IPv6; ``:PORT`` means every interface),
    or None for ``off``. Raises InvalidSpec naming ``option``."""
    text = text.strip()
    if text.lower() in OFF:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidSpec(option, f"{text!r} is not HOST:PORT (or off)")
    return host.strip("[]") or "0.0.0.0", int(port)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; raises OSError (address in use, no such address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def node_credentials(settings: NodeSettings) -> Credentials:
    if settings.etcd_tls:
        from ..store import TLSFiles

        return TLSFiles(*settings.etcd_tls).credentials()
    return settings.credentials


class WebChild:
    """A running ``conductor serve`` child of a node."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str):
        self.proc = proc
        self.url = url

    @classmethod
    def start_for(cls, settings: NodeSettings, node: str, metrics_dir: Path | None) -> "WebChild | None":
        """Start serving ``settings.http`` for ``node``; None when it is off or cannot be bound
        (said in one log line: the node runs without HTTP)."""
        address = parse_address(settings.http) if settings.http else None
        if address is None:
            return None
        try:
            sock = bind(*address)
        except OSError as exc:
            log.warning("node %s: not serving HTTP: cannot listen on %s (%s); running without the web UI and API",
                        node, settings.http, exc.strerror or exc)
            return None
        argv = [sys.executable, "-m", "conductor", "serve", "--from-node", "--fd", str(sock.fileno()),
                "--etcd", ",".join(settings.etcd), "--namespace", settings.namespace, "--node", node]
        if metrics_dir is not None:
            argv += ["--metrics-dir", str(metrics_dir)]
        if settings.http_cert:
            argv += ["--http-cert", settings.http_cert, "--http-key", settings.http_key]
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}  # its own values stay its own
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, pass_fds=[sock.fileno()], env=env)
        finally:
            sock.close()  # the child holds it now
        _send(proc.stdin, {"credentials": node_credentials(settings).config()})
        scheme = "https" if settings.http_cert else "http"
        url = f"{scheme}://{settings.http.strip()}"
        log.info("node %s: web UI, HTTP API and /metrics on %s (pid %d)", node, url, proc.pid)
        return cls(proc, url)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the child (closing its stdin tells it; SIGTERM, then SIGKILL if it lingers)."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout / 2)
            return
        except subprocess.TimeoutExpired:
            self.proc.terminate()
        try:
            self.proc.wait(timeout / 2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)


def _send(stream: IO[bytes] | None, message: dict) -> None:
    if stream is None:
        return
    try:
        stream.write(json.dumps(message).encode() + b"\n")
        stream.flush()
    except OSError as exc:  # the child died at once: its own error is on stderr
        log.warning("the web server child did not take its settings: %s", exc)


def read_from_node(stream: IO[str]) -> dict:
    """The child's side of :func:`_send`: the one JSON line of settings from the node."""
    line = stream.readline()
    try:
        return json.loads(line) if line.strip() else {}
    except ValueError:
        raise InvalidSpec("--from-node", "the node's settings on stdin are not JSON") from None
