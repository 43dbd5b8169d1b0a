"""/metrics: a real node serving HTTP is scraped during a run and its counters move as tasks
finish; and the pure parts of conductor.metrics (labels, the queue sample, the scrape cache, the
multiprocess files) without etcd."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conductor import metrics
from conductor.readyqueue import ReadyQueue
from conductor.claims import Ready
from conductor.client import Client
from harness import EtcdServer, free_port, wait_for


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels without pid)."""
    text = httpx.get(base + "/metrics", timeout=30).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid"))
            out[(s.name, labels)] = out.get((s.name, labels), 0.0) + s.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_counters_move_as_a_running_node_finishes_tasks(shared_etcd: EtcdServer, namespace: str, start_nodes: Any,
                                                         client: Client) -> None:
    port = free_port()
    node = start_nodes(shared_etcd.endpoint, 1, slots=2, ttl=2, extra=["--http", f"127.0.0.1:{port}"])[0]
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(base), 30, 0.1, "the node's /metrics")
    before = scrape(base)
    assert total(before, "conductor_tasks_started_total", node=node.name) == 0
    tasks = [{"cmd": ["sh", "-c", "sleep 3"]} for _ in range(4)] + [{"cmd": ["false"], "max_attempts": 1}]
    job = client.post({"name": "measured", "layers": [{"tasks": tasks, "on_error": "continue"}]})
    wait_for(lambda: total(scrape(base), "conductor_tasks_started_total") >= 2, 20, 0.2, "two tasks started")
    wait_for(lambda: total(scrape(base), "conductor_tasks", state="RUNNING") >= 1, 20, 0.5,
             "tasks by state (read from etcd, cached 2 s) show the running ones")
    client.wait(job, timeout=60)
    wait_for(lambda: total(scrape(base), "conductor_tasks_finished_total") >= 5, 20, 0.2, "five outcomes counted")
    after = scrape(base)
    assert total(after, "conductor_tasks_started_total", node=node.name) == 5
    assert total(after, "conductor_tasks_finished_total", outcome="COMPLETED") == 4
    assert total(after, "conductor_tasks_finished_total", outcome="ERRORED") == 1
    assert total(after, "conductor_post_to_start_seconds_count") == 5
    assert total(after, "conductor_claim_to_start_seconds_count") == 5
    assert total(after, "conductor_etcd_request_seconds_count") > total(before, "conductor_etcd_request_seconds_count")
    wait_for(lambda: total(scrape(base), "conductor_lease_renewal_seconds_count") > 0, 10, 0.2, "a renewal counted")
    wait_for(lambda: total(scrape(base), "conductor_free_slots", node=node.name) == 2, 10, 0.2, "slots sampled free")
    assert total(scrape(base), "conductor_running_tasks", node=node.name) == 0


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# ---- without etcd ------------------------------------------------------------------------------------------


def test_queue_depth_is_counted_by_priority() -> None:
    queue = ReadyQueue()
    for n, priority in enumerate([0, 0, 5, 5, 5, -1]):
        task = {"id": f"j{n % 2}.0.{n}", "job": f"j{n % 2}", "layer": f"j{n % 2}.0", "priority": priority, "user": "u"}
        queue.put(Ready(task, n + 1))
    assert queue.depth_by_priority() == {0: 2, 5: 3, -1: 1}


def test_tasks_by_state_is_cached_and_an_etcd_error_leaves_it_out() -> None:
    calls: list[int] = []

    def count() -> dict[str, int]:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("etcd away")
        return {"RUNNING": 3, "QUEUED": 1}

    collector = metrics.TasksByState(count)
    first = list(collector.collect())
    assert {s.labels["state"]: s.value for s in first[0].samples} == {"RUNNING": 3, "QUEUED": 1}
    list(collector.collect())
    assert len(calls) == 1  # cached
    collector._cached = (0.0, {})
    assert list(collector.collect()) == []  # the error: left out, not raised


def test_a_node_process_writes_files_the_server_reads(tmp_path: Path) -> None:
    """The node's values cross processes: a child counts into a directory, the registry reads it."""
    directory = tmp_path / "metrics" / "n1"
    script = textwrap.dedent(f"""
        from pathlib import Path
        from conductor import metrics
        metrics.use_directory(Path({str(directory)!r}))
        metrics.task_started("n1", 100.0, 99.0, 100.5)
        metrics.tasks_finished("n1", ["COMPLETED", "COMPLETED", "ERRORED"])
        metrics.schedule_fired("n1", "skipped: run x of the previous tick is still RUNNING")
        metrics.schedule_fired("n1", None)
        metrics.self_fenced("n1")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry(directory)).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("conductor_tasks_started_total", (("node", "n1"),))] == 1
    assert samples[("conductor_tasks_finished_total", (("node", "n1"), ("outcome", "COMPLETED")))] == 2
    assert samples[("conductor_schedule_fires_total", (("node", "n1"), ("result", "skipped")))] == 1
    assert samples[("conductor_self_fencing_total", (("node", "n1"),))] == 1
    assert samples[("conductor_post_to_start_seconds_sum", (("node", "n1"),))] == 1.5
    metrics_dir_again = directory  # a new node on the same directory starts from zero
    subprocess.run([sys.executable, "-c", f"from pathlib import Path\nfrom conductor import metrics\n"
                    f"metrics.use_directory(Path({str(metrics_dir_again)!r}))"], check=True, timeout=60)
    assert "conductor_tasks_started_total" not in generate_latest(metrics.registry(directory)).decode()
