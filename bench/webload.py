"""The web side in the job benchmarks: conductors with or without ``--http``, and simulated open pages.

``--http off`` (the default, as the figures before the web server were measured) starts the
conductors without HTTP. ``--http on`` gives each its own free loopback port (its ``conductor serve``
child). ``--pages N`` (with ``--http on``) opens N "browser pages" spread over the conductors, of
the kind ``--page-kind`` says:

- ``ui`` (the default): what the web UI's job page does in a browser. Each page opens the job list
  (``/ui/`` and its live stream ``/ui/live/jobs``) until a job is posted, then the running job's
  page (``/ui/jobs/<job>``) and its live stream (``/ui/live/job?id=<job>``), for the whole run.
- ``api``: a program following everything: one live event stream (``/api/v1/events?all_users=1``)
  and one read of the job list with its counts every second.

Standard library only (urllib), so any venv with conductor runs it.
"""
from __future__ import annotations

import argparse
import http.client
import os
import threading
import time
import urllib.request
from typing import Any

from harness import Cluster, free_port, say

PAGE_READ_EVERY = 1.0


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http", choices=("off", "on"), default="off",
                   help="on: each conductor serves HTTP on its own loopback port (its conductor serve child)")
    p.add_argument("--pages", type=int, default=0, help="with --http on: simulated open browser pages")
    p.add_argument("--page-kind", choices=("ui", "api"), default="ui",
                   help="ui: the web UI's page of the running job, live; api: /api/v1/events (every user's "
                        "transitions) and a job-list read a second")


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
    for url in urls:  # its conductor serve child has imported everything and answers: not within a timed run
        wait_answers(url + "/healthz")
    return urls


def wait_answers(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                answer.read()
                return
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} does not answer after {timeout:.0f} s") from None
            time.sleep(0.2)


class Pages:
    """``count`` simulated pages over ``urls`` until :meth:`stop`; :meth:`show` moves the UI
    pages to a job's page."""

    def __init__(self, urls: list[str], count: int, kind: str = "ui"):
        self.urls = urls
        self.count = count if urls else 0
        self.kind = kind
        self.stopping = threading.Event()
        self.reads = 0
        self.events = 0
        self.job: str | None = None  # the job the UI pages show (None: the job list)
        self._open: set[Any] = set()  # the UI pages' open streams, closed when they move on
        self._lock = threading.Lock()

    def start(self) -> "Pages":
        for i in range(self.count):
            base = self.urls[i % len(self.urls)]
            if self.kind == "ui":
                threading.Thread(target=self._ui_page, args=(base,), daemon=True).start()
                continue
            if os.environ.get("BENCH_PAGES") != "read":
                threading.Thread(target=self._stream, args=(base,), daemon=True).start()
            if os.environ.get("BENCH_PAGES") != "stream":
                threading.Thread(target=self._reader, args=(base,), daemon=True).start()
        if self.count:
            say(f"{self.count} simulated {self.kind} pages open over {len(self.urls)} conductor(s)")
        return self

    def show(self, job: str) -> None:
        """The UI pages open ``job``'s page now, as people opening the job they just posted."""
        with self._lock:
            self.job = job
            streams = list(self._open)
        for stream in streams:
            try:
                stream.close()
            except OSError:
                pass

    def _ui_page(self, base: str) -> None:
        while not self.stopping.is_set():
            job = self.job
            page, live = (f"/ui/jobs/{job}", f"/ui/live/job?id={job}") if job else ("/ui/", "/ui/live/jobs")
            try:
                with urllib.request.urlopen(base + page, timeout=30) as answer:
                    answer.read()
                with self._lock:
                    self.reads += 1
                self._follow(base + live, job)
            except (OSError, ValueError, AttributeError, http.client.HTTPException):
                pass  # closed by show(): open the next page
            if self.job == job:
                self.stopping.wait(1.0)

    def _follow(self, url: str, job: str | None) -> None:
        with urllib.request.urlopen(url, timeout=600) as stream:
            with self._lock:
                self._open.add(stream)
            try:
                while not self.stopping.is_set() and self.job == job:
                    chunk = stream.read1(65536)
                    if not chunk:
                        return
                    with self._lock:
                        self.events += chunk.count(b"event: fragment")
            finally:
                with self._lock:
                    self._open.discard(stream)

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
        self.show("")
        return {"pages": self.count, "page_kind": self.kind, "page_reads": self.reads, "page_events": self.events}
