#!/usr/bin/env python3
"""Latency: post -> task process started, over many single-task jobs posted one after another.

Each job is one task ``sh -c 'date +%s.%N > $CONDUCTOR_RESULT'``: the task itself records the
moment it ran. The latency of a job is that moment minus the wall-clock time taken just before
``Client.post`` was called. Each job is waited for (``Client.wait``) before the next is posted;
the result is read with ``Client.result`` after the job completes. Both ends are read from the
same clock (one machine).

Prints one JSON object: count, nodes, median_ms, p99_ms, min_ms, max_ms (and the same figures
for the conductor's own ``started`` stamp, taken just before it forks the child, as
``node_started``, for the ``Client.post`` call alone, as ``post_call``, and for the round trip
from just before ``Client.post`` to ``Client.wait`` returning the job COMPLETED, as ``round_trip``;
``wait_after_end`` is from the job's ``ended`` stamp, taken by the node just before the commit that
completes it, to ``Client.wait`` returning).
``auth`` says whether etcd's auth was on (``--auth``: conductors as the node account, the client as a user).
Target: median under 15 ms.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Cluster, common_args, emit, say, run_main  # noqa: E402
from measure import host_facts, median, percentile  # noqa: E402
from throughput import DEFAULT_SLOTS  # noqa: E402

TARGET_MEDIAN_MS = 15.0
MARKER_JOB = {"name": "latency",
              "layers": [{"name": "only", "tasks": [{"name": "stamp",
                                                     "cmd": ["sh", "-c", "date +%s.%N > $CONDUCTOR_RESULT"]}]}]}


def stats(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(median(values), 2), "p99_ms": round(percentile(values, 99), 2),
            "min_ms": round(min(values), 2), "max_ms": round(max(values), 2)}


def main() -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--slots", type=int, default=DEFAULT_SLOTS, help="slots per conductor (0: the conductor's default)")
    p.add_argument("--warmup", type=int, default=5, help="untimed jobs first")
    args = p.parse_args()
    with Cluster(keep=args.keep, node_dir=args.node_dir, auth=args.auth) as cl:
        cl.start_nodes(args.nodes, slots=args.slots, extra=["--http", "off"])
        client = cl.client()
        lat: list[float] = []
        node_lat: list[float] = []
        post_ms: list[float] = []
        round_trip: list[float] = []
        after_end: list[float] = []
        by_node: dict[str, int] = {}
        for i in range(args.warmup + args.jobs):
            before = time.time()
            job_id = client.post(MARKER_JOB)
            posted = time.time()
            done = client.wait(job_id, timeout=60)
            returned = time.time()
            if done["state"] != "COMPLETED":
                raise SystemExit(f"job {job_id} ended {done['state']}")
            task_id = f"{job_id}.0.0"
            raw = client.result(task_id)
            if i < args.warmup:
                continue
            started = float(raw.decode().strip())
            lat.append((started - before) * 1000)
            post_ms.append((posted - before) * 1000)
            round_trip.append((returned - before) * 1000)
            after_end.append((returned - done["ended"]) * 1000)
            task = client.task(task_id)
            node_lat.append((task["started"] - before) * 1000)
            by_node[task.get("node") or "?"] = by_node.get(task.get("node") or "?", 0) + 1
        s = stats(lat)
        say(f"post -> task started over {len(lat)} jobs: {s}; node stamp {stats(node_lat)}; "
            f"post -> wait returned {stats(round_trip)}; by node {by_node}")
        emit({"bench": "latency", "count": len(lat), "nodes": args.nodes, "slots": args.slots, "auth": args.auth, **s,
              "target_median_ms": TARGET_MEDIAN_MS, "met": s["median_ms"] < TARGET_MEDIAN_MS,
              "post_call": stats(post_ms), "round_trip": stats(round_trip), "wait_after_end": stats(after_end),
              "node_started": stats(node_lat), "tasks_by_node": by_node,
              "host": host_facts(cl)})


if __name__ == "__main__":
    run_main(main)
