"""A real ``conductor serve`` process on a free loopback port, for the web and metrics tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from harness import free_port, wait_for


class WebServer:
    def __init__(self, etcd: str, namespace: str, log_dir: Path, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, port: int | None = None, scheme: str = "http"):
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"serve-{self.port}.log"
        self.args = [sys.executable, "-m", "conductor", "serve", "--http", f"127.0.0.1:{self.port}", "--etcd", etcd,
                     "--namespace", namespace, *(extra or [])]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> "WebServer":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env)
        if wait:
            wait_for(self.answers, 30, 0.1, f"conductor serve on {self.url}:\n{self.log()}")
        return self

    def answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"conductor serve exited:\n{self.log()}"
        try:
            httpx.get(self.url + "/healthz", timeout=2.0, verify=False)
            return True
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
