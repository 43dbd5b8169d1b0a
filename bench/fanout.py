#!/usr/bin/env python3
"""Fan-out: a three-layer job 1 -> N -> 1 of ``true`` tasks over conductors, post -> COMPLETED.

Prints one JSON object: layers, tasks, nodes, slots, seconds (post to COMPLETED), post_seconds,
plus the same diagnostics as throughput.py. Target: 1 -> 1000 -> 1 on 2 conductors within 3 s.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Cluster, common_args, emit, run_main  # noqa: E402
from measure import add_job_args, host_facts, time_jobs, true_job  # noqa: E402
from throughput import DEFAULT_SLOTS  # noqa: E402

TARGET_SECONDS = 3.0


def phases(client: Any, run: dict[str, Any]) -> dict[str, float]:
    """Where the median run's time went, from the tasks' own start and end stamps (ms precision):
    post -> first task started, each layer's span (first start -> last end), each hop between
    layers (last end of one -> first start of the next), last end -> the client saw COMPLETED."""
    job = client.show(run["job"], tasks=0)  # every task: the spans need all of them
    spans = []
    for layer in job["layer_list"]:
        tasks = layer["task_list"]
        spans.append((min(t["started"] for t in tasks), max(t["ended"] for t in tasks)))
    out = {"post_to_first_start": spans[0][0] - run["posted_at"]}
    for i, (start, end) in enumerate(spans):
        if i:
            out[f"hop_{i - 1}_to_{i}"] = start - spans[i - 1][1]
        out[f"layer_{i}_span"] = end - start
    out["last_end_to_seen_completed"] = run["done_at"] - spans[-1][1]
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=1000, help="tasks of the middle layer")
    add_job_args(p, DEFAULT_SLOTS)
    args = p.parse_args()
    layers = [1, args.width, 1]
    with Cluster(keep=args.keep, node_dir=args.node_dir, auth=args.auth) as cl:
        r = time_jobs(cl, lambda: true_job("fanout", layers), sum(layers), args)
        emit({"bench": "fanout", "layers": layers, "tasks": sum(layers), "nodes": args.nodes, "slots": args.slots,
              "auth": args.auth, "seconds": r["seconds"], "post_seconds": r["post_seconds"], "target_seconds": TARGET_SECONDS,
              "met": r["seconds"] <= TARGET_SECONDS, "wait_mode": args.wait_mode,
              **{k: v for k, v in r.items() if k not in ("seconds", "post_seconds") and not k.startswith("_")},
              "phases": phases(r["_client"], r["_run"]), "host": host_facts(cl)})


if __name__ == "__main__":
    run_main(main)
