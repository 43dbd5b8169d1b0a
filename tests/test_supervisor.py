"""The supervisor process on real processes: how tasks are started, reaped, timed out and fenced
(no etcd needed: no lease is given, so nothing is renewed)."""
from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conductor.supervision import Supervision
from conductor.supervisor import spawn
from harness import wait_for


def _exec_done(pid: int, program: str) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe").endswith(program)
    except OSError:
        return False


def _status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split()[1]
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def test_a_task_gets_only_stdio_a_session_of_its_own_and_default_signals(tmp_path):
    """Looked at from outside, once the task has exec'd: nothing in the test races with it."""
    import grpc

    channel = grpc.insecure_channel("127.0.0.1:1")  # gRPC's own fds must not leak into tasks
    held = socket.socket()
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    log = tmp_path / "task.log"
    try:
        pid = spawn(["sleep", "30"], {"PATH": "/usr/bin:/bin"}, None, str(log))
    finally:
        signal.signal(signal.SIGHUP, previous)
        held.close()
        channel.close()
    try:
        wait_for(lambda: _exec_done(pid, "sleep"), 10, what="the task exec'd")
        assert sorted(os.listdir(f"/proc/{pid}/fd"), key=int) == ["0", "1", "2"]
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2") == str(log)
        assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # its own session and group to kill
        assert int(_status(pid, "SigBlk"), 16) == 0
        # no standard signal ignored (SIGPIPE is, in Python); glibc keeps its own 32 and 33 as they were
        assert int(_status(pid, "SigIgn"), 16) & 0x7FFFFFFF == 0
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_the_executable_is_found_on_the_tasks_own_path_and_a_missing_one_is_named(tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "mytool").write_text("#!/bin/sh\necho mine $1\n")
    (tools / "mytool").chmod(0o755)
    log = tmp_path / "out.log"
    pid = spawn(["mytool", "x"], {"PATH": f"{tools}:/usr/bin:/bin"}, None, str(log))
    _, status = os.waitpid(pid, 0)
    assert (log.read_text(), os.waitstatus_to_exitcode(status)) == ("mine x\n", 0)
    with pytest.raises(FileNotFoundError) as missing:
        spawn(["mytool"], {"PATH": "/usr/bin:/bin"}, None, str(log))
    assert missing.value.filename == "mytool"


def test_a_working_directory_other_than_the_nodes_is_honoured(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = tmp_path / "out.log"
    pid = spawn(["pwd"], {"PATH": "/usr/bin:/bin"}, str(elsewhere), str(log))
    os.waitpid(pid, 0)
    assert log.read_text().strip() == str(elsewhere)
    assert os.getcwd() != str(elsewhere), "the spawning process went back to its own directory"


@pytest.fixture
def supervision():
    sup = Supervision(["127.0.0.1:1"], ttl=10)
    events: queue.Queue = queue.Queue()
    for name in ("started", "exited"):
        sup.on(name, lambda *args, name=name: events.put((name, *args)))
    sup.start()
    sup.events = events  # type: ignore[attr-defined]
    yield sup
    sup.close(revoke=False)


def _next(events: queue.Queue, kind: str, timeout: float = 10.0) -> tuple:
    end = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.01, end - time.monotonic()))
        if event[0] == kind:
            return event


def test_the_supervisor_starts_reaps_times_out_and_reports(supervision, tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    supervision.spawn("ok#1", ["sh", "-c", "echo hi; exit 3"], env, None, str(tmp_path / "a.log"), None, 1.0)
    _, handle, pid, _ = _next(supervision.events, "started")
    _, handle, status, cpu, ended, why = _next(supervision.events, "exited")
    assert (handle, os.waitstatus_to_exitcode(status), why) == ("ok#1", 3, None)
    assert (tmp_path / "a.log").read_text() == "hi\n"
    supervision.spawn("slow#1", ["sleep", "30"], env, None, str(tmp_path / "b.log"), 0.3, 1.0)
    _, handle, status, _, _, why = _next(supervision.events, "exited")
    assert (handle, why, os.waitstatus_to_exitcode(status)) == ("slow#1", "timeout", -signal.SIGTERM)
    supervision.spawn("nope#1", ["no-such-program"], env, None, str(tmp_path / "c.log"), None, 1.0)
    _, handle, status, _, _, why = _next(supervision.events, "exited")
    assert handle == "nope#1" and why.startswith("start_failed:") and "no-such-program" in why


def test_a_kill_reaches_the_whole_tree_and_sigkill_follows_the_grace(supervision, tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    pids = tmp_path / "pids"
    script = f"trap '' TERM; sleep 60 & echo $! > {pids}; wait"
    supervision.spawn("tree#1", ["sh", "-c", script], env, None, str(tmp_path / "t.log"), None, 0.5)
    _next(supervision.events, "started")
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 10)
    child = int(pids.read_text())
    supervision.kill("tree#1", "stop", 0.5)
    _, handle, status, _, _, why = _next(supervision.events, "exited")
    assert why == "stop" and os.waitstatus_to_exitcode(status) == -signal.SIGKILL  # TERM was ignored
    wait_for(lambda: not Path(f"/proc/{child}").exists() or _status(child, "State") == "Z", 5,
             what="the task's child is gone too")


CONDUCTOR = textwrap.dedent("""
    import sys, time
    from conductor.supervision import Supervision
    sup = Supervision(["127.0.0.1:1"], ttl=10)
    sup.start()
    for i in range(3):
        sup.spawn(f"t{i}#1", ["sh", "-c", f"echo $$ >> {sys.argv[1]}; exec sleep 120"], {"PATH": "/usr/bin:/bin"},
                  None, f"{sys.argv[1]}.{i}.log", None, 1.0)
    print(sup.pid, flush=True)
    time.sleep(120)
""")


def test_when_the_conductor_is_killed_its_tasks_die_with_it(tmp_path):
    """kill -9 of the conductor: its supervisor kills every task it started."""
    pids = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-c", CONDUCTOR, str(pids)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    supervisor = int(proc.stdout.readline())
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 3, 10, what="3 tasks started")
    tasks = [int(p) for p in pids.read_text().split()]
    proc.kill()
    proc.wait()

    def gone(pid: int) -> bool:
        return not Path(f"/proc/{pid}").exists() or _status(pid, "State") == "Z"

    wait_for(lambda: all(gone(p) for p in tasks), 10, what="every task killed")
    wait_for(lambda: gone(supervisor), 15, what="the supervisor ended")


def test_a_fenced_supervisor_kills_at_the_deadline_then_rests(tmp_path):
    """No renewal can succeed (no etcd): at the deadline every task is killed and "lost" is said
    once; afterwards the supervisor waits quietly (it must not spin on a deadline in the past)."""
    import psutil

    sup = Supervision(["127.0.0.1:1"], ttl=2)
    events: queue.Queue = queue.Queue()
    for name in ("exited", "lost"):
        sup.on(name, lambda *args, name=name: events.put((name, *args)))
    sup.start()
    try:
        sup.lease(1234, time.monotonic())
        sup.spawn("long#1", ["sleep", "60"], {"PATH": "/usr/bin:/bin"}, None, str(tmp_path / "l.log"), None, 5.0)
        seen = {}
        while len(seen) < 2:
            event = events.get(timeout=10)
            seen[event[0]] = event
        _, handle, status, _, _, why = seen["exited"]
        assert (handle, why, os.waitstatus_to_exitcode(status)) == ("long#1", "fenced", -signal.SIGKILL)
        assert sup.pid is not None
        assert psutil.Process(sup.pid).cpu_percent(interval=1.5) < 10, "the fenced supervisor spins"
    finally:
        sup.close(revoke=False)


DYING = textwrap.dedent("""
    import os, sys
    from conductor.supervision import Supervision
    sup = Supervision(["127.0.0.1:1"], ttl=10)
    sup.start()
    bulk = "x" * 60_000  # 40 requests of 60 KB: more than one read takes, so some wait unread
    for i in range(40):
        sup.spawn(f"t{i}#1", ["sleep", "120"], {"PATH": "/usr/bin:/bin", "MARK": sys.argv[1], "BULK": bulk},
                  None, f"{sys.argv[2]}.{i}.log", None, 1.0)
    print(sup.pid, flush=True)
    os._exit(0)  # gone while the supervisor is still starting them and reporting on them
""")


def test_a_conductor_dying_while_its_tasks_start_leaves_none_running(tmp_path):
    """The supervisor's reports go to a closed socket: that is the conductor's death, not the
    supervisor's (it must not crash and leave its tasks to init)."""
    import psutil

    mark = f"dying-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.run([sys.executable, "-c", DYING, mark, str(tmp_path / "t")], capture_output=True, text=True,
                          timeout=30)
    supervisor = int(proc.stdout.split()[0])

    def marked() -> list[int]:
        found = []
        for p in psutil.process_iter():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and p.environ().get("MARK") == mark:
                    found.append(p.pid)
            except psutil.Error:
                continue
        return found

    wait_for(lambda: not psutil.pid_exists(supervisor) or psutil.Process(supervisor).status() == "zombie", 20,
             what="the supervisor ended")
    left = marked()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "tasks outlived their supervisor"
