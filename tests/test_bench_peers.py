"""bench/peers/report.py: the issue-13 table's medians, ratios and targets, from made-up run records.

Pure code, no etcd: the peer benchmark itself (Celery, Redis, real conductors) is run by hand with
``bash bench/peers/run.sh``, never by the test suite. report.py is loaded by path, as bench/ is
not a package.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPORT = Path(__file__).resolve().parent.parent / "bench" / "peers" / "report.py"
SYSTEMS = ["celery", "ceiling", "conductor"]


def load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers_report", REPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = load_report()


def w1(tasks_per_s: float, **extra: Any) -> dict[str, Any]:
    # the 1-minute load before the run: 4.0 to 9.0 over the W1 runs below
    load = 4.0 + (tasks_per_s % 20) / 2
    return {"tasks_per_s": tasks_per_s, "ok": True, "loadavg_before": [load, 1.0, 1.0], **extra}


def results(conductor_w1: list[float]) -> dict[str, list[dict[str, Any]]]:
    cost = {"etcd_per_task": {"puts": 2.0, "deletes": 0.5}, "cpu_ms_per_task": {"total": 1.2}}
    return {
        "celery/W1/N=1000": [w1(200), w1(250), w1(230)],
        "ceiling/W1/N=1000": [w1(1600), w1(1400), w1(1500)],
        "conductor/W1/N=1000": [w1(v, **cost) for v in conductor_w1],
        "celery/W4/N=200": [{"lat_median_ms": 3.0, "lat_p99_ms": 9.0, "ok": True}],
        "conductor/W4/N=200": [{"lat_median_ms": 2.0, "lat_p99_ms": 12.0, "ok": True}],
        "ceiling/W2/N=1000": [{"wall_s": 0.5, "ok": True}],
        "conductor/W2/N=1000": [{"wall_s": 2.4, "ok": True}, {"error": True}],
    }


def row(summary: list[dict[str, Any]], row_id: str) -> dict[str, Any]:
    return next(r for r in summary if r["id"] == row_id)


def test_throughput_row_takes_medians_and_ratios_to_celery_and_the_ceiling() -> None:
    summary = report.summarise(results([700, 800, 760]), SYSTEMS, 1000, 5000, 200)
    fig = row(summary, "w1")["figures"][0]
    assert fig["cells"]["conductor"] == {"median": 760, "min": 700, "max": 800, "runs": 3}
    assert fig["ratios"]["celery"] == 760 / 230
    assert fig["ratios"]["ceiling"] == 760 / 1500
    assert row(summary, "w1")["met"] is True   # 3.30x Celery and 51% of the ceiling


def test_throughput_row_fails_when_one_condition_fails() -> None:
    # 3.04x Celery but only 46 % of the ceiling
    summary = report.summarise(results([700, 690, 720]), SYSTEMS, 1000, 5000, 200)
    assert row(summary, "w1")["met"] is False


def test_latency_row_needs_both_median_and_p99_within_celerys() -> None:
    summary = report.summarise(results([760]), SYSTEMS, 1000, 5000, 200)
    start = row(summary, "start")
    assert [f["ratios"]["celery"] for f in start["figures"]] == [2.0 / 3.0, 12.0 / 9.0]
    assert start["met"] is False


def test_absolute_targets_and_summed_fields() -> None:
    summary = report.summarise(results([760]), SYSTEMS, 1000, 5000, 200)
    writes = row(summary, "key_writes")
    assert writes["figures"][0]["cells"]["conductor"]["median"] == 2.5   # puts + deletes
    assert writes["figures"][0]["parts"]["conductor"] == {"puts": 2.0, "deletes": 0.5}
    assert writes["met"] is True and writes["figures"][0]["ratios"] == {}
    assert row(summary, "cpu")["met"] is True


def test_failed_runs_are_left_out_and_missing_figures_are_unknown() -> None:
    summary = report.summarise(results([760]), SYSTEMS, 1000, 5000, 200)
    w2 = row(summary, "w2")
    assert w2["figures"][0]["cells"]["conductor"]["runs"] == 1
    assert w2["met"] is True   # 2.4 s <= 5 x 0.5 s
    big = row(summary, "w1_big")   # no run of W1 N=5000 at all
    assert big["met"] is None and big["figures"][0]["cells"]["conductor"] is None


def test_a_run_reporting_ok_false_does_not_count() -> None:
    recs = results([760])
    recs["conductor/W1/N=1000"].append({"tasks_per_s": 5000.0, "ok": False})
    fig = row(report.summarise(recs, SYSTEMS, 1000, 5000, 200), "w1")["figures"][0]
    assert fig["cells"]["conductor"]["max"] == 760


def test_markdown_has_the_issue_shape() -> None:
    summary = report.summarise(results([700, 800, 760]), SYSTEMS, 1000, 5000, 200)
    table = report.markdown(summary, SYSTEMS, report.digits_of(1000, 5000, 200), runs=3)
    lines = table.splitlines()
    assert lines[0] == "|  | Celery | ceiling | Conductor default | Conductor ratio | target | met | load before |"
    w1_line = next(line for line in lines if line.startswith("| 1,000 `true` tasks"))
    assert "| 760 (700-800) |" in w1_line
    assert "3.30x Celery, 0.51x ceiling" in w1_line
    assert w1_line.endswith("| >= 3x Celery, >= 50% of the ceiling | yes | 4.0-9.0 |")
    start_line = next(line for line in lines if line.startswith("| post -> start"))
    assert "| 2.0 / 12.0 ms [1 run] |" in start_line and start_line.endswith("| no | n/a |")
    w2_line = next(line for line in lines if line.startswith("| 1 -> 1,000 -> 1"))
    assert "| 2.40 s [1 run] |" in w2_line   # one of its runs failed
    writes_line = next(line for line in lines if line.startswith("| etcd key writes"))
    assert "| 2.5 (2.5-2.5) = 2.0 puts + 0.5 deletes |" in writes_line
    big_line = next(line for line in lines if line.startswith("| 5,000 `true` tasks"))
    assert big_line.endswith("| n/a | n/a |")


def test_every_row_has_a_target() -> None:
    assert {r.id for r in report.rows(1000, 5000, 200)} == set(report.TARGETS)
