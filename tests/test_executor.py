"""The executor's pieces on real processes (no etcd needed)."""
from __future__ import annotations

import subprocess
import threading
import time

from conductor.executor import Reaper


def test_reaper_waits_for_every_child_even_when_pidfds_are_reused_at_once():
    reaper = Reaper()
    reaped: list[int] = []
    lock = threading.Lock()

    def spawn(n: int) -> None:
        for _ in range(n):
            proc = subprocess.Popen(["true"])

            def done(status: int, usage: object, proc: subprocess.Popen = proc) -> None:
                proc.returncode = 0
                with lock:
                    reaped.append(proc.pid)

            reaper.watch(proc.pid, done)

    threads = [threading.Thread(target=spawn, args=(300,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 30
    while len(reaped) < 1200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(reaped) == 1200 and len(set(reaped)) == 1200
