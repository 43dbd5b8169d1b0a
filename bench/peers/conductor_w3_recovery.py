"""W3 recovery on Conductor: how long until a task held by a killed conductor runs again elsewhere.

Two conductors (separate `conductor run` processes, `--slots CONCURRENCY`) are up and registered.
A one-task job is posted; the task appends a timestamped start marker naming its node
($CONDUCTOR_NODE) to a file, then `exec sleep 30`. As soon as the marker shows which conductor
holds it, that conductor's whole process tree is frozen and SIGKILLed, as for the peers: the
conductor, its fence watchdog, and the task's process (`sleep`). Measured: time from the kill to
the second start marker, written by the task on the other conductor.

usage: conductor_w3_recovery.py N CONCURRENCY [--ttl T] [--wait S]
  N        number of one-task jobs posted (the workload uses 1; only the first is measured)
  --ttl    conductor lease TTL (omit: Conductor's default, 10 s)
  --wait   give up this many seconds after the kill (default 60)
Prints one JSON line.
"""
import argparse
import os
import shlex
import time

from common import SCRATCH, emit, pid_alive, wait_markers
import conductor_common as k



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("concurrency", type=int)
    ap.add_argument("--ttl", type=int, default=None)
    ap.add_argument("--wait", type=float, default=60.0)
    ap.add_argument("--node-dir", default="disk", choices=("disk", "tmpfs"))
    a = ap.parse_args()
    marker = os.path.join(SCRATCH, f"cw3-markers-{os.getpid()}.jsonl")
    if os.path.exists(marker):
        os.remove(marker)
    script = ('printf \'{"t": %s, "node": "%s", "pid": %s}\\n\' "$(date +%s.%N)" "$CONDUCTOR_NODE" $$ '
              f'>> {shlex.quote(marker)}; exec sleep 30')
    job = {"name": "w3", "layers": [{"name": "long", "tasks": [
        {"name": "sleep", "cmd": ["sh", "-c", script]}]}]}
    out = {"system": "conductor", "workload": "W3", "n": a.n, "concurrency": a.concurrency,
           "ttl_s": a.ttl if a.ttl is not None else 10, "ttl_is_default": a.ttl is None,
           "wait_s": a.wait}
    with k.Cluster("w3", 2, slots=str(a.concurrency), ttl=a.ttl, node_dir=a.node_dir,
                   names=["w3a", "w3b"]) as cl:
        try:
            cl.start()
            client = cl.client()
            job_ids = [client.post(job) for _ in range(a.n)]
            started = wait_markers(marker, 1, 30)
            if started is None:
                raise TimeoutError("task never started")
            first = started[0]
            victim = cl.procs[first["node"]]
            t_kill = time.time()
            killed = victim.kill_tree()
            victim.p.wait(timeout=10)
            time.sleep(0.2)
            out["killed_pids"] = len(killed)
            out["killed_all_dead"] = not any(pid_alive(pid) for pid in killed)
            out["killed_node"] = first["node"]
            out["start_to_kill_s"] = round(t_kill - first["t"], 3)
            both = wait_markers(marker, 2, a.wait)
            second = both[1] if both else None
            if second is not None:
                task = client.task(f"{job_ids[0]}.0.0")
                out.update({"recovered": True, "recovery_s": round(second["t"] - t_kill, 3),
                            "recovered_on": second["node"], "attempts": task.get("attempts"),
                            "history_tail": [r.get("reason") for r in task.get("records", [])[-3:]],
                            "ok": second["node"] != first["node"]})
            else:
                out.update({"recovered": False, "recovery_s": None, "recovery": f">{a.wait:g} s",
                            "ok": True})
            emit(out)
        finally:
            # the survivor runs `sleep 30`: kill its tree at once, as the peers' W3 does
            for p in cl.procs.values():
                p.stop(grace=0)
            if os.path.exists(marker):
                os.remove(marker)


if __name__ == "__main__":
    main()
