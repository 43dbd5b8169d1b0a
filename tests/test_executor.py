"""The executor's pieces on real processes (no etcd needed)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conductor.executor import Reaper, spawn


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


def _run(argv: list[str], env: dict[str, str], cwd: str | None, tmp_path) -> tuple[int, str, int]:
    out_path = tmp_path / "out.log"
    with open(out_path, "wb") as out:
        child = spawn(argv, env, cwd, out.fileno())
    _, status = os.waitpid(child.pid, 0)
    return child.pid, out_path.read_text(), os.waitstatus_to_exitcode(status)


def test_a_task_gets_only_stdio_a_session_of_its_own_and_default_signals(tmp_path):
    import grpc

    channel = grpc.insecure_channel("127.0.0.1:1")  # gRPC's own fds must not leak into tasks
    held = socket.socket()
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        script = ("ls /proc/$$/fd | tr '\\n' ' '; echo; cut -d' ' -f6 /proc/$$/stat; "
                  "grep -E '^Sig(Ign|Blk)' /proc/$$/status; read x; echo \"stdin=[$x]\"; echo err >&2")
        pid, out, code = _run(["sh", "-c", script], {"PATH": "/usr/bin:/bin"}, None, tmp_path)
    finally:
        signal.signal(signal.SIGHUP, previous)
        held.close()
        channel.close()
    fds, session, blocked, ignored, stdin, err = out.splitlines()
    assert code == 0
    assert fds.split() == ["0", "1", "2"]
    assert int(session) == pid  # its own session, so its own process group to kill
    assert blocked.split()[1] == "0000000000000000"
    # no standard signal ignored (SIGPIPE is, in Python); glibc keeps its own 32 and 33 as they were
    assert int(ignored.split()[1], 16) & 0x7FFFFFFF == 0
    assert stdin == "stdin=[]" and err == "err"


def test_the_executable_is_found_on_the_tasks_own_path(tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "mytool").write_text("#!/bin/sh\necho mine $1\n")
    (tools / "mytool").chmod(0o755)
    _, out, code = _run(["mytool", "x"], {"PATH": f"{tools}:/usr/bin:/bin"}, None, tmp_path)
    assert (out, code) == ("mine x\n", 0)
    with pytest.raises(FileNotFoundError) as missing:
        spawn(["mytool"], {"PATH": "/usr/bin:/bin"}, None, 1)
    assert missing.value.filename == "mytool"


def test_a_working_directory_other_than_the_nodes_is_honoured(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _, out, code = _run(["pwd"], {"PATH": "/usr/bin:/bin"}, str(elsewhere), tmp_path)
    assert (out.strip(), code) == (str(elsewhere), 0)
    _, out, _ = _run(["pwd"], {"PATH": "/usr/bin:/bin"}, os.getcwd(), tmp_path)
    assert out.strip() == os.getcwd()
