"""Running the web application with uvicorn on a socket already bound (:func:`conductor.web.child.bind`)."""
from __future__ import annotations

import logging
import socket
import threading
from typing import IO

import uvicorn

from .app import make_app
from .context import WebSettings

log = logging.getLogger("conductor.web")


def _exit_when_closed(stream: IO[str], server: uvicorn.Server) -> None:
    """The node holds our stdin open: its end (the node stopped, or died) stops this server."""
    def watch() -> None:
        try:
            while stream.readline():
                pass
        except (OSError, ValueError):
            pass
        server.should_exit = True

    threading.Thread(target=watch, name="node-watch", daemon=True).start()


def serve(settings: WebSettings, sock: socket.socket, cert: str = "", key: str = "",
          node_stdin: IO[str] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or, with ``node_stdin``, until the node closes it). TLS when
    ``cert`` and ``key`` are given. No access log: one line per request would drown the node's."""
    config = uvicorn.Config(make_app(settings), ssl_certfile=cert or None, ssl_keyfile=key or None,
                            log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2,
                            proxy_headers=False)
    server = uvicorn.Server(config)
    if node_stdin is not None:
        _exit_when_closed(node_stdin, server)
    server.run(sockets=[sock])
