"""``conductor serve``: the web UI, HTTP API and /metrics without running tasks (``conductor run``
serves the same through a child process running this command, see conductor.web.child)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import render, security
from .common import Etcd, Namespace, _endpoints, app

Http = Annotated[str, typer.Option(
    "--http", help="HOST:PORT to serve the web UI, HTTP API and /metrics on ([::1]:PORT for IPv6; off: none).")]
HttpCert = Annotated[str, typer.Option("--http-cert", help="Certificate (PEM) to serve HTTPS with; with --http-key.")]
HttpKey = Annotated[str, typer.Option("--http-key", help="Private key (PEM) of --http-cert.")]


def check_tls(cert: str, key: str) -> None:
    """--http-cert and --http-key come together and can be read; raises InvalidSpec."""
    import os

    from conductor.errors import InvalidSpec

    if bool(cert) != bool(key):
        raise InvalidSpec("--http-cert" if key else "--http-key", "--http-cert and --http-key go together")
    for option, path in (("--http-cert", cert), ("--http-key", key)):
        if path and not os.access(path, os.R_OK):
            raise InvalidSpec(option, f"cannot read {path!r}")


@app.command()
def serve(http: Http = "127.0.0.1:8420", http_cert: HttpCert = "", http_key: HttpKey = "",
          etcd: Etcd = None, namespace: Namespace = None,
          node: Annotated[str, typer.Option(hidden=True, help="The node this serves for: /healthz follows its "
                                                              "session.")] = "",
          metrics_dir: Annotated[Optional[Path], typer.Option(hidden=True, help="The node's metric files.")] = None,
          fd: Annotated[Optional[int], typer.Option(hidden=True, help="Serve on this bound socket.")] = None,
          from_node: Annotated[bool, typer.Option("--from-node", hidden=True, help="Started by a node: settings "
                                                  "on stdin, stop when it closes.")] = False) -> None:
    """Serve the web UI, the JSON HTTP API, /metrics and /healthz (no tasks run here)."""
    import socket

    from conductor.credentials import Credentials
    from conductor.errors import InvalidSpec
    from conductor.settings import default_namespace
    from conductor.web.child import bind, parse_address, read_from_node
    from conductor.web.context import WebSettings
    from conductor.web.server import serve as run_server

    check_tls(http_cert, http_key)
    if from_node:
        creds = Credentials.from_config(read_from_node(sys.stdin).get("credentials"))
    else:
        creds = security.credentials()
        creds.ask_password()
    settings = WebSettings(etcd=_endpoints(etcd) or ["127.0.0.1:2379"], namespace=namespace or default_namespace(),
                           credentials=creds, node=node, metrics_dir=metrics_dir)
    if fd is not None:
        sock = socket.socket(fileno=fd)
    else:
        address = parse_address(http)
        if address is None:
            raise InvalidSpec("--http", "off: nothing to serve")
        try:
            sock = bind(*address)
        except OSError as exc:
            raise InvalidSpec("--http", f"cannot listen on {http}: {exc.strerror or exc}") from None
        render.err.print(f"serving the web UI, HTTP API and /metrics on {'https' if http_cert else 'http'}://{http}")
    run_server(settings, sock, http_cert, http_key, sys.stdin if from_node else None)


def node_http(settings: Any, http: str, cert: str, key: str) -> None:
    """``conductor run``'s HTTP options into its settings (checked now: a bad one stops the start),
    and where the node keeps its metrics (conductor.metrics.use_directory), before anything counts."""
    from conductor import metrics
    from conductor.web.child import parse_address

    check_tls(cert, key)
    address = parse_address(http)
    settings.http = http if address else ""
    settings.http_cert, settings.http_key = cert, key
    metrics.use_directory(metrics.node_directory(settings.data_dir.resolve(), settings.node_name()))
