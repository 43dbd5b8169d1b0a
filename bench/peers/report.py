"""The issue-13 table of the peer benchmark: medians, min-max, ratios, targets and whether each is met.

Pure code: it reads the per-run JSON records the workload scripts print (grouped by the driver as
``{"celery/W1/N=1000": [record, ...], ...}``) and builds one summary (a dict, printed as JSON) and
its markdown table. Nothing here runs a process or talks to etcd, so tests/test_bench_peers.py
checks it with made-up records.

The targets of issue 13 live in one table, :data:`TARGETS`: each is a list of conditions on the
Conductor column's median, relative to another column's median ("celery", "ceiling") or absolute
(``None``). A row is met when every condition holds for every figure of the row (a "median / p99"
row has two), unknown (``None``) when a figure it needs is missing.
"""
from __future__ import annotations

import operator
import statistics
from dataclasses import dataclass
from typing import Any, Callable

Records = dict[str, list[dict[str, Any]]]

SUBJECT = "conductor"
COLUMNS = {"celery": "Celery", "rq": "RQ", "ceiling": "ceiling", "conductor": "Conductor default"}
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Condition:
    """Conductor's median `op` factor x the median of `reference` (or x 1 if reference is None)."""
    op: str
    factor: float
    reference: str | None = None


@dataclass(frozen=True)
class Target:
    text: str
    conditions: tuple[Condition, ...]


# The "target" column of issue 13, one entry per row id.
_THROUGHPUT = Target(">= 3x Celery, >= 50% of the ceiling",
                     (Condition(">=", 3.0, "celery"), Condition(">=", 0.5, "ceiling")))
_CELERYS = Target("<= Celery's", (Condition("<=", 1.0, "celery"),))
TARGETS: dict[str, Target] = {
    "w1": _THROUGHPUT,
    "w1_big": _THROUGHPUT,
    "w2": Target("<= 5x the ceiling", (Condition("<=", 5.0, "ceiling"),)),
    "start": _CELERYS,
    "round_trip": _CELERYS,
    "key_writes": Target("<= 3", (Condition("<=", 3.0),)),
    "cpu": Target("<= 1.5 ms", (Condition("<=", 1.5),)),
}


@dataclass(frozen=True)
class Metric:
    """One figure of a row: the records of `workload` (e.g. "W1/N=1000"), the sum of `fields`."""
    name: str
    workload: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    unit: str
    digits: int
    metrics: tuple[Metric, ...]


def rows(n: int, n_big: int, w4_n: int) -> list[Row]:
    """The rows of issue 13's table for these knobs."""
    w1, w4 = f"W1/N={n}", f"W4/N={w4_n}"
    return [
        Row("w1", f"{n:,} `true` tasks, tasks/s", "", 0, (Metric("tasks/s", w1, ("tasks_per_s",)),)),
        Row("w1_big", f"{n_big:,} `true` tasks, tasks/s", "", 0,
            (Metric("tasks/s", f"W1/N={n_big}", ("tasks_per_s",)),)),
        Row("w2", f"1 -> {n:,} -> 1 workflow, wall", " s", 2, (Metric("wall", f"W2/N={n}", ("wall_s",)),)),
        Row("start", f"post -> start, median / p99 ({w4_n} in sequence)", " ms", 1,
            (Metric("median", w4, ("lat_median_ms",)), Metric("p99", w4, ("lat_p99_ms",)))),
        Row("round_trip", "post -> result round trip, median / p99", " ms", 1,
            (Metric("median", w4, ("rtt_median_ms",)), Metric("p99", w4, ("rtt_p99_ms",)))),
        Row("key_writes", f"etcd key writes per task (puts + deletes, W1 {n:,})", "", 1,
            (Metric("writes", w1, ("etcd_per_task.puts", "etcd_per_task.deletes")),)),
        Row("cpu", f"CPU per task (conductors + etcd + client; ceiling: all of it), W1 {n:,}", " ms", 2,
            (Metric("cpu", w1, ("cpu_ms_per_task.total",)),)),
    ]


def field_of(rec: dict[str, Any], field: str) -> float | None:
    """rec[field]; a dotted field reads nested maps ("cpu_ms_per_task.total")."""
    value: Any = rec
    for part in field.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_values(recs: list[dict[str, Any]], fields: tuple[str, ...]) -> list[float]:
    """One value per good run: the sum of `fields` (a run missing any of them, or failed, is left out).
    A field missing from every run means the figure is not measured; an etcd counter that did not
    move is absent from etcd_per_task, so a sum counts it as 0 when another field of it is there."""
    out = []
    for rec in recs:
        if rec.get("error") or rec.get("ok") is False:
            continue
        vals = [field_of(rec, f) for f in fields]
        if all(v is None for v in vals):
            continue
        out.append(sum(v for v in vals if v is not None))
    return out


def parts(recs: list[dict[str, Any]], fields: tuple[str, ...]) -> dict[str, float] | None:
    """The median of each field of a sum by itself, named by its last part ("puts")."""
    out = {f.rsplit(".", 1)[-1]: statistics.median(v) for f in fields for v in [run_values(recs, (f,))] if v}
    return out or None


def cell(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def condition_holds(cond: Condition, subject: float | None, medians: dict[str, float]) -> bool | None:
    if subject is None:
        return None
    if cond.reference is None:
        return _OPS[cond.op](subject, cond.factor)
    ref = medians.get(cond.reference)
    if ref is None:
        return None
    return _OPS[cond.op](subject, cond.factor * ref)


def ratios(target: Target | None, subject: float | None, medians: dict[str, float]) -> dict[str, float]:
    """Conductor's median over each reference column's median named by the row's target."""
    if target is None or subject is None:
        return {}
    refs = [c.reference for c in target.conditions if c.reference is not None]
    return {r: subject / medians[r] for r in refs if medians.get(r)}


def all_met(verdicts: list[bool | None]) -> bool | None:
    """False if any condition fails, None if none fails but one cannot be judged, else True."""
    if any(v is False for v in verdicts):
        return False
    if any(v is None for v in verdicts):
        return None
    return True


def summarise_row(row: Row, results: Records, systems: list[str]) -> dict[str, Any]:
    """The row's cells per system and figure, its ratios and whether its target is met."""
    target = TARGETS.get(row.id)
    figures, verdicts = [], []
    for metric in row.metrics:
        cells = {s: cell(run_values(results.get(f"{s}/{metric.workload}", []), metric.fields)) for s in systems}
        medians = {s: c["median"] for s, c in cells.items() if c is not None}
        subject = medians.get(SUBJECT)
        if target is not None:
            verdicts += [condition_holds(cond, subject, medians) for cond in target.conditions]
        figure = {"name": metric.name, "cells": cells, "ratios": ratios(target, subject, medians)}
        if len(metric.fields) > 1:   # a sum: its parts too (key writes = puts + deletes)
            figure["parts"] = {s: parts(results.get(f"{s}/{metric.workload}", []), metric.fields) for s in systems}
        figures.append(figure)
    loads = [r["loadavg_before"][0] for m in row.metrics for s in systems
             for r in results.get(f"{s}/{m.workload}", []) if r.get("loadavg_before")]
    return {"id": row.id, "label": row.label, "unit": row.unit.strip(), "figures": figures,
            "target": target.text if target else None, "met": all_met(verdicts) if target else None,
            "load1_before": [min(loads), max(loads)] if loads else None}


def summarise(results: Records, systems: list[str], n: int, n_big: int, w4_n: int) -> list[dict[str, Any]]:
    return [summarise_row(row, results, systems) for row in rows(n, n_big, w4_n)]


# ---- markdown ------------------------------------------------------------------------------------

def fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def fmt_cell(c: dict[str, Any] | None, digits: int) -> str:
    """"median (min-max)"."""
    if c is None:
        return "n/a"
    text = fmt(c["median"], digits)
    if c["runs"] > 1:
        text += f" ({fmt(c['min'], digits)}-{fmt(c['max'], digits)})"
    return text


def _runs_text(figures: list[dict[str, Any]], system: str, runs: int) -> str:
    """" [k runs]" when fewer than `runs` runs gave the system's figures (failed or not repeated)."""
    got = [f["cells"][system]["runs"] for f in figures if f["cells"].get(system)]
    if not got or min(got) >= runs:
        return ""
    return f" [{min(got)} run{'s' if min(got) > 1 else ''}]"


def _parts_text(figure: dict[str, Any], system: str, digits: int) -> str:
    """" = 7.0 puts + 4.0 deletes" after a sum's median."""
    named = (figure.get("parts") or {}).get(system)
    if not named or figure["cells"].get(system) is None:
        return ""
    return " = " + " + ".join(f"{fmt(v, digits)} {name}" for name, v in named.items())


def _join(parts: list[str], unit: str) -> str:
    """"2.8 / 9.4 ms": the figures of one row, the unit once at the end."""
    if all(p == "n/a" for p in parts):
        return "n/a"
    return " / ".join(parts) + unit


def _ratio_text(figures: list[dict[str, Any]]) -> str:
    refs = sorted({r for f in figures for r in f["ratios"]}, key=lambda r: (r != "celery", r))
    if not refs:
        return "n/a"
    return ", ".join(" / ".join(f"{f['ratios'][r]:.2f}x" if r in f["ratios"] else "n/a" for f in figures)
                     + f" {COLUMNS.get(r, r)}" for r in refs)


def _met_text(met: bool | None) -> str:
    return {True: "yes", False: "no", None: "n/a"}[met]


def _load_text(load: list[float] | None) -> str:
    return "n/a" if not load else f"{load[0]:.1f}-{load[1]:.1f}"


def markdown(summary: list[dict[str, Any]], systems: list[str], digits: dict[str, int], runs: int = 1) -> str:
    """The issue's table: one column per system, then Conductor's ratios, the target, met, and the
    range of the 1-minute load average before the row's runs."""
    head = ["", *(COLUMNS.get(s, s) for s in systems), "Conductor ratio", "target", "met", "load before"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        nd = digits.get(row["id"], 1)
        unit = f" {row['unit']}" if row["unit"] else ""
        cells = [_join([fmt_cell(f["cells"].get(s), nd) + _parts_text(f, s, nd) for f in row["figures"]], unit)
                 + _runs_text(row["figures"], s, runs) for s in systems]
        lines.append("| " + " | ".join([row["label"], *cells, _ratio_text(row["figures"]), row["target"] or "",
                                        _met_text(row["met"]), _load_text(row.get("load1_before"))]) + " |")
    return "\n".join(lines)


def digits_of(n: int, n_big: int, w4_n: int) -> dict[str, int]:
    return {row.id: row.digits for row in rows(n, n_big, w4_n)}
