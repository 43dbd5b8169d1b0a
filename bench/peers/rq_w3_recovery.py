"""W3 recovery on RQ: one job (retry=Retry(max=1), RQ's only way to get an
abandoned job re-run) writes a start marker and runs `sleep 30`; two `rq worker`
OS processes; SIGKILL the whole process group of the worker holding it; measure
time until the job starts again on the other worker.

usage: rq_w3_recovery.py N CONCURRENCY [--tuned] [--wait S]
  --tuned  workers get --worker-ttl 20 --maintenance-interval 5
           --job-monitoring-interval 5 (defaults: 420 / 600 / 30)
Prints one JSON line.
"""
import argparse
import os
import time

from common import SCRATCH, emit, pid_alive, wait_markers
import rq_common as rc
import rq_tasks



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("concurrency", type=int)
    ap.add_argument("--tuned", action="store_true")
    ap.add_argument("--wait", type=float, default=60.0)
    a = ap.parse_args()
    from rq import Retry

    extra = (["--worker-ttl", "20", "--maintenance-interval", "5",
              "--job-monitoring-interval", "5"] if a.tuned else [])
    marker = os.path.join(SCRATCH, f"rq-w3-markers-{os.getpid()}.jsonl")
    if os.path.exists(marker):
        os.remove(marker)
    rc.clean()
    names = ["rq-w3a", "rq-w3b"]
    procs = rc.start_workers(names, extra_args=extra, tag="w3")
    by_name = dict(zip(names, procs))
    out = {"system": "rq", "workload": "W3", "n": a.n, "concurrency": a.concurrency,
           "settings": ("worker_ttl=20,maintenance_interval=5,job_monitoring_interval=5"
                        if a.tuned else "defaults (worker_ttl=420,maintenance_interval=600,"
                                        "job_monitoring_interval=30)"),
           "retry": "Retry(max=1)", "wait_s": a.wait}
    try:
        rc.wait_ready(names, procs)
        q = rc.queue()
        for _ in range(a.n):
            q.enqueue(rq_tasks.long_marker, marker, None, ["sleep", "30"],
                      retry=Retry(max=1))
        started = wait_markers(marker, 1, 30)
        if started is None:
            raise TimeoutError("task never started")
        first = started[0]
        victim = by_name[first["worker"]]
        t_kill = time.time()
        killed = victim.kill_tree()
        victim.p.wait(timeout=10)
        time.sleep(0.2)
        out["killed_pids"] = len(killed)
        out["killed_all_dead"] = not any(pid_alive(pid) for pid in killed)
        out["killed_worker"] = first["worker"]
        both = wait_markers(marker, 2, a.wait)
        second = both[1] if both else None
        if second is not None:
            out.update({"recovered": True, "recovery_s": round(second["t"] - t_kill, 3),
                        "recovered_on": second["worker"],
                        "ok": second["worker"] != first["worker"]})
        else:
            out.update({"recovered": False, "recovery_s": None,
                        "recovery": f">{a.wait:g} s", "ok": True})
        emit(out)
    finally:
        rc.stop_workers(procs, grace=0)
        rc.clean()
        if os.path.exists(marker):
            os.remove(marker)


if __name__ == "__main__":
    main()
