"""The web side in the job benchmarks: conductors with or without ``--http``, and simulated open pages.

``--http off`` (the default, as the figures before the web server were measured) starts the
conductors without HTTP. ``--http on`` gives each its own free loopback port (its ``conductor serve``
child). ``--pages N`` (with ``--http on``) opens N "browser pages" spread over the conductors, each
one live event stream (``/api/v1/events``, server-sent events) and one read of the job list with
its counts every second, as a page refreshing on events would, for the whole run. Standard library
only (urllib), so any venv with conductor runs it.
"""
from __future__ import annotations

import argparse
import http.client
import os
import threading
import urllib.request
from typing import Any

from harness import Cluster, free_port, say

PAGE_READ_EVERY = 1.0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http", choices=("off", "on"), default="off",
                   help="on: each conductor serves HTTP on its own loopback port (its conductor serve child)")
    p.add_argument("--pages", type=int, default=0, help="with --http on: simulated open browser pages "
                                                       "(an event stream and a job-list read a second each)")


def start_nodes(cl: Cluster, args: argparse.Namespace) -> list[str]:
    """Start the conductors with or without HTTP; returns their base URLs (none without HTTP)."""
    names = [f"b{i + 1}" for i in range(args.nodes)]
    urls: list[str] = []
    for name in names:
        if args.http == "on":
            port = free_port()
            urls.append(f"http://127.0.0.1:{port}")
            cl.start_node(name, slots=args.slots, extra=["--http", f"127.0.0.1:{port}"])
        else:
            cl.start_node(name, slots=args.slots, extra=["--http", "off"])
    cl.wait_registered(names)
    return urls


class Pages:
    """``count`` simulated pages over ``urls`` until :meth:`stop`."""

    def __init__(self, urls: list[str], count: int):
        self.urls = urls
        self.count = count if urls else 0
        self.stopping = threading.Event()
        self.reads = 0
        self.events = 0
        self._lock = threading.Lock()

    def start(self) -> "Pages":
        for i in range(self.count):
            base = self.urls[i % len(self.urls)]
            if os.environ.get("BENCH_PAGES") != "read":
                threading.Thread(target=self._stream, args=(base,), daemon=True).start()
            if os.environ.get("BENCH_PAGES") != "stream":
                threading.Thread(target=self._reader, args=(base,), daemon=True).start()
        if self.count:
            say(f"{self.count} simulated pages open over {len(self.urls)} conductor(s)")
        return self

    def _stream(self, base: str) -> None:
        try:
            with urllib.request.urlopen(base + "/api/v1/events?all_users=1", timeout=600) as stream:
                tail = b""
                while not self.stopping.is_set():
                    chunk = stream.read1(65536)  # as a browser reads: big reads, not a call per line
                    if not chunk:
                        return
                    seen = (tail + chunk).count(b"\ndata:") - tail.count(b"\ndata:")
                    tail = chunk[-8:]
                    with self._lock:
                        self.events += seen
        except (OSError, http.client.HTTPException):
            return

    def _reader(self, base: str) -> None:
        while not self.stopping.wait(PAGE_READ_EVERY):
            try:
                with urllib.request.urlopen(base + "/api/v1/jobs?all_users=1&limit=20", timeout=30) as page:
                    page.read()
                with self._lock:
                    self.reads += 1
            except (OSError, http.client.HTTPException):
                continue

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        return {"pages": self.count, "page_reads": self.reads, "page_events": self.events}
