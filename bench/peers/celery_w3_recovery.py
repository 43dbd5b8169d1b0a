"""W3 recovery on Celery: how long until a task held by a killed worker runs again.

One task (acks_late=True, reject_on_worker_lost=True) writes a timestamped
start marker to a file and then runs `sleep 30`. Two workers run as separate
OS processes (each `celery worker -P prefork -c CONCURRENCY`). As soon as the
marker shows which worker holds the task, that worker's whole process group
(main process, pool children, the `sleep`) gets SIGKILL. We then measure how
long until the second start marker appears (written by the other worker).

usage: celery_w3_recovery.py N CONCURRENCY [--vt SECONDS] [--restore I,T] [--wait S]
  N            number of long tasks (the workload uses 1; only the first is measured)
  --vt         broker visibility_timeout (omit: kombu default 3600 s)
  --restore    kombu unacked_restore_interval,unacked_restore_throttle (omit: 10,10)
  --wait       give up waiting for recovery after this many seconds (default 60)
  --delay      wait this long after the workers are ready before submitting (default 0)
Prints one JSON line.
"""
import argparse
import os
import sys
import time



def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("concurrency", type=int)
    ap.add_argument("--vt", type=int, default=None)
    ap.add_argument("--restore", default=None)
    ap.add_argument("--wait", type=float, default=60.0)
    ap.add_argument("--delay", type=float, default=0.0,
                    help="sleep this long after the workers are ready, before submitting "
                         "(moves the kill relative to the survivor's restore-sweep phase)")
    return ap.parse_args()


def kill_holder(a, marker, by_host, out):
    """Wait for the first start marker, SIGKILL the worker holding the task; return (marker, kill time)."""
    from common import CELERY_BROKER_DB, pid_alive, redis_client, wait_markers

    first_markers = wait_markers(marker, 1, 30)
    if first_markers is None:
        raise TimeoutError("task never started")
    first = first_markers[0]
    victim = by_host[first["hostname"]]
    t_kill = time.time()
    killed = victim.kill_tree()
    victim.p.wait(timeout=10)
    time.sleep(0.2)
    out["killed_pids"] = len(killed)
    out["killed_all_dead"] = not any(pid_alive(pid) for pid in killed)
    r = redis_client(CELERY_BROKER_DB)
    idx = r.zrange("unacked_index", 0, -1, withscores=True)
    out["unacked_after_kill"] = r.hlen("unacked")
    if idx:
        vt = a.vt if a.vt is not None else 3600
        # earliest moment a restore sweep may requeue it (sweeps add more delay)
        out["eligible_for_restore_after_kill_s"] = round(idx[0][1] + vt - t_kill, 2)
    out["killed_worker"] = first["hostname"]
    out["start_to_kill_s"] = round(t_kill - first["t"], 3)
    return first, t_kill


def recovery(a, marker, first, t_kill, out):
    """Wait up to --wait for the second start marker; record the recovery in `out`."""
    from common import CELERY_BROKER_DB, redis_client, wait_markers

    markers = wait_markers(marker, 2, a.wait)
    if markers is not None:
        second = markers[1]
        out.update({"recovered": True,
                    "recovery_s": round(second["t"] - t_kill, 3),
                    "recovered_on": second["hostname"],
                    "redelivered_flag": second["redelivered"],
                    "ok": second["hostname"] != first["hostname"]})
    else:
        out.update({"recovered": False, "recovery_s": None,
                    "recovery": f">{a.wait:g} s",
                    "unacked_at_give_up": redis_client(CELERY_BROKER_DB).hlen("unacked"),
                    "ok": True})


def main():
    a = parse_args()
    # Same settings for the client and both workers (read by celery_app at import).
    env = {}
    if a.vt is not None:
        env["PEERBENCH_CELERY_VT"] = str(a.vt)
    if a.restore:
        env["PEERBENCH_CELERY_RESTORE"] = a.restore
    os.environ.update(env)

    from common import SCRATCH, emit
    import celery_common as cc
    from celery_app import app, long_marker

    marker = os.path.join(SCRATCH, f"w3-markers-{os.getpid()}.jsonl")
    if os.path.exists(marker):
        os.remove(marker)
    cc.clean()
    names = ["w3a", "w3b"]
    procs = cc.start_workers(names, a.concurrency, env=env, tag="w3")
    by_host = {f"{n}@peerbench": p for n, p in zip(names, procs)}
    out = {"system": "celery", "workload": "W3", "n": a.n, "concurrency": a.concurrency,
           "visibility_timeout_s": a.vt if a.vt is not None else 3600,
           "visibility_timeout_is_default": a.vt is None,
           "restore_interval_throttle": a.restore or "10,10 (default)",
           "wait_s": a.wait}
    try:
        cc.wait_ready(app, names, procs)
        t_ready = time.time()
        if a.delay > 0:
            time.sleep(a.delay)
        for _ in range(a.n):
            long_marker.delay(marker, ["sleep", "30"])
        first, t_kill = kill_holder(a, marker, by_host, out)
        out["workers_ready_to_kill_s"] = round(t_kill - t_ready, 2)
        recovery(a, marker, first, t_kill, out)
        emit(out)
    finally:
        for p in procs:
            p.stop(grace=0)
        cc.clean()
        if os.path.exists(marker):
            os.remove(marker)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
