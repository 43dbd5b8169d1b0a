"""Human output for the CLI: tables, trees, progress. Machine output is ``--json``."""
from __future__ import annotations

import functools
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from conductor import ticks
from conductor.lifecycle import attempt_text

# rich is imported where a table, tree or console is made, not here: importing it costs ~35 ms of
# every start, and --json output (and post, which prints an id) never needs it
if TYPE_CHECKING:
    from rich.console import Console
    from rich.tree import Tree

# Piped output (``conductor show | grep``) must keep whole lines: rich would wrap at 80 columns
# when stdout is not a terminal, so it gets a width no line reaches instead.
PIPE_WIDTH = 100_000


@functools.cache
def _console(name: str) -> Console:
    """The console of stdout (``out``) or stderr (``err``), made on first use."""
    from rich.console import Console

    if name == "out":
        return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
    return _console("out")


def __getattr__(name: str) -> Console:
    """``render.out`` and ``render.err``: the consoles, for the command modules."""
    if name in ("out", "err"):
        return _console(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


STATE_STYLE = {"PENDING": "dim", "QUEUED": "cyan", "RUNNING": "yellow", "COMPLETED": "green",
               "ERRORED": "bold red", "SKIPPED": "magenta"}


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_default, sort_keys=True) + "\n")


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def state(text: str, paused: bool = False) -> str:
    style = STATE_STYLE.get(text, "")
    label = f"[{style}]{text}[/]" if style else text
    return label + (" [dim](paused)[/]" if paused else "")


def age(ts: float | None) -> str:
    if not ts:
        return "-"
    return span(time.time() - ts)


def span(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def progress(counts: dict[str, int]) -> str:
    done = counts.get("completed", 0) + counts.get("skipped", 0)
    parts = [f"{done}/{counts.get('total', 0)} done"]
    if counts.get("running"):
        parts.append(f"[yellow]{counts['running']} running[/]")
    if counts.get("queued"):
        parts.append(f"[cyan]{counts['queued']} queued[/]")
    if counts.get("errored"):
        parts.append(f"[red]{counts['errored']} errored[/]")
    if counts.get("skipped"):
        parts.append(f"[magenta]{counts['skipped']} skipped[/]")
    return ", ".join(parts)


def jobs_table(jobs: list[dict[str, Any]]) -> None:
    _out().print(jobs_renderable(jobs))


def jobs_renderable(jobs: list[dict[str, Any]]) -> Any:
    if not jobs:
        return "[dim]no jobs[/]"
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("ID", "NAME", "STATE", "PROGRESS", "AGE", "USER"):
        table.add_column(col)
    for job in jobs:
        table.add_row(job["id"], job["name"], state(job["state"], bool(job.get("paused"))), progress(job["counts"]),
                      age(job["created"]), job["user"])
    return table


def describe_source(source: dict[str, Any]) -> str:
    """How a job was started, in a line: file, template and inputs, message, schedule and tick."""
    kind = source.get("kind")
    bits = []
    if kind == "file":
        bits.append(f"file {source.get('path')}")
    elif kind == "schedule":
        tz = source.get("tz") or "UTC"  # in the schedule's zone, as its rule reads (UTC before zones existed)
        bits.append(f"schedule {source.get('schedule')} ({source.get('cron')} {tz}), "
                    f"tick {ticks.local(source.get('tick', 0), tz)}")
    elif kind == "message":
        bits.append(f"message {source.get('message')}" + (f" from job {source['job']}" if source.get("job") else ""))
    elif kind == "join":
        bits.append(f"join of {', '.join(source.get('after', []))}")
    elif kind and kind != "template":
        bits.append(str(kind))
    if source.get("template"):
        bits.append(f"template {source['template']}")
    if source.get("inputs"):
        bits.append("inputs " + ", ".join(f"{k}={v}" for k, v in source["inputs"].items()))
    return "; ".join(bits)


def layer_bar(layer: dict[str, Any]) -> str:
    """A bar of the layer's done tasks, from its counts (a view holds only a page of its tasks)."""
    counts = layer.get("counts") or {}
    total = counts.get("total", 0)
    done = counts.get("completed", 0) + counts.get("skipped", 0)
    width = 20
    filled = int(width * done / total) if total else width
    return f"[green]{'█' * filled}[/][dim]{'░' * (width - filled)}[/] {done}/{total}"


def layer_counts(layer: dict[str, Any]) -> str:
    """The layer's tasks by state, e.g. ``3 running, 10 queued, 9,987 pending``."""
    counts = layer.get("counts") or {}
    parts = [f"[{STATE_STYLE[s.upper()]}]{counts[s]:,} {s}[/]" for s in ("running", "queued", "errored", "skipped")
             if counts.get(s)]
    if counts.get("pending"):
        parts.append(f"{counts['pending']:,} pending")
    return ", ".join(parts)


def more_line(layer: dict[str, Any]) -> str | None:
    """The line that stands for the tasks after the page, or None when it shows them all."""
    more = layer.get("more") or 0
    if not more:
        return None
    return f"[dim]… and {more:,} more (--all-tasks to list, or --after {layer['next']})[/]"


def _task_line(task: dict[str, Any]) -> str:
    usage = task.get("usage") or {}
    bits = [f"{task['name']} {task['id']}", state(task["state"], bool(task.get("paused_at"))),
            attempt_text(task)]
    if task.get("node"):
        bits.append(f"on {task['node']}")
    if task.get("waiting"):
        bits.append(waiting(task))
    if task.get("exit_code") is not None:
        bits.append(f"exit {task['exit_code']}")
    bits.append(_duration(task))
    if usage.get("max_rss"):
        bits.append(f"[dim]{size(usage['max_rss'])} peak[/]")
    if usage.get("cpu") is not None:
        bits.append(f"[dim]{usage['cpu']:.2f}s cpu[/]")
    return "  ".join(bits)


def waiting(obj: dict[str, Any]) -> str:
    """Why a queued task (or some queued task of a layer or job) waits, or "" when none cannot be placed."""
    from rich.markup import escape

    return f"[yellow]{escape(obj['waiting'])}[/]" if obj.get("waiting") else ""


def _duration(obj: dict[str, Any]) -> str:
    if not obj.get("started"):
        return "-"
    end = obj.get("ended") or (time.time() if obj.get("state") == "RUNNING" else None)
    return span(end - obj["started"]) if end else "-"


def job_tree(job: dict[str, Any]) -> None:
    _out().print(job_tree_renderable(job))


def job_tree_renderable(job: dict[str, Any]) -> Any:
    """A job's head, then per layer its counts and the page of tasks the view holds."""
    head = (f"[bold]{job['name']}[/] {job['id']}  {state(job['state'], bool(job.get('paused_at')))}  "
            f"{progress(job['counts'])}  [dim]etag {job['etag']}, posted {age(job['created'])} ago by {job['user']}[/]")
    started_by = describe_source(job.get("source") or {})
    if started_by:
        head += f"\n[dim]started by {started_by}[/]"
    if job.get("deadline_at"):
        passed = " (passed: killed)" if job.get("deadline_passed") else ""
        head += f"\n[dim]deadline {_clock(job['deadline_at'])}{passed}[/]"
    if job.get("waiting"):
        head += f"\n{waiting(job)}"
    comp = job.get("compensation")
    if comp:  # docs/flow/compensation.md: its own state beside the job's
        head += f"\ncompensation {state(comp['state'])}: {comp.get('reason', '')}"
    from rich.tree import Tree

    tree = Tree(head)
    for layer in job["layer_list"]:
        counts = layer_counts(layer)
        where = (f"compensates {layer.get('compensates') or 'the job'}" if layer.get("compensation")
                 else f"order {layer['order']}")
        branch = tree.add(f"[bold]{layer['name']}[/] {layer['id']} {where}  "
                          f"{state(layer['state'], bool(layer.get('paused_at')))}  {layer_bar(layer)}"
                          f"{'  ' + counts if counts else ''}"
                          f"{'  on_error continue' if layer.get('on_error') == 'continue' else ''}"
                          f"{'  min_success %g' % layer['min_success'] if layer.get('min_success') else ''}"
                          f"  [dim]etag {layer['etag']}[/]"
                          f"{'  ' + waiting(layer) if layer.get('waiting') else ''}")
        _add_tasks(branch, layer)
    return tree


def _add_tasks(branch: Tree, layer: dict[str, Any]) -> None:
    for task in layer["task_list"]:
        branch.add(_task_line(task))
    more = more_line(layer)
    if more:
        branch.add(more)


def layer_view(layer: dict[str, Any]) -> None:
    _out().print(f"[bold]layer {layer['name']}[/] {layer['id']} of job {layer['job']}  order {layer['order']}  "
                 f"{state(layer['state'], bool(layer.get('paused_at')))}  {layer_bar(layer)}  {layer_counts(layer)}  "
                 f"[dim]etag {layer['etag']}, {_duration(layer)}[/]")
    if layer.get("waiting"):
        _out().print(waiting(layer))
    from rich.tree import Tree

    tree = Tree("[dim]tasks[/]")
    _add_tasks(tree, layer)
    _out().print(tree)


def task_view(task: dict[str, Any]) -> None:
    usage = task.get("usage") or {}
    _out().print(f"[bold]{task['name']}[/] {task['id']}  {state(task['state'], bool(task.get('paused_at')))}  "
                 f"[dim]etag {task['etag']}[/]")
    cmd = " ".join(task.get("cmd") or [])
    rows = [("command", ("sh -c " if task.get("shell") else "") + cmd),
            ("image", task.get("image")), ("attempts", f"{task.get('attempts', 0)} run(s); {attempt_text(task)}"),
            ("node", task.get("node")), ("exit code", task.get("exit_code")), ("reason", task.get("reason")),
            ("started", _clock(task.get("started"))), ("ended", _clock(task.get("ended"))),
            ("duration", _duration(task)),
            ("peak memory", size(usage.get("max_rss")) if usage else None),
            ("cpu time", f"{usage['cpu']:.3f}s" if usage.get("cpu") is not None else None),
            ("timeout", f"{task['timeout']:g}s" if task.get("timeout") else None),
            ("retry", _retry_text(task)),
            ("start within", f"{task['start_within']:g}s" if task.get("start_within") else None),
            ("env", " ".join(f"{k}={v}" for k, v in (task.get("env") or {}).items()) or None)]
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    for name, value in rows:
        if value not in (None, "", "-"):
            table.add_row(name, str(value))
    _out().print(table)
    if task.get("waiting"):
        _out().print(waiting(task))
    _out().print("[bold]history[/]" + (f" [dim]({task['records_dropped']} older records dropped)[/]"
                                         if task.get("records_dropped") else ""))
    hist = Table(box=None, pad_edge=False)
    for col in ("TIME", "STATE", "NODE", "REASON"):
        hist.add_column(col)
    for rec in task.get("records", []):
        hist.add_row(_clock(rec.get("at")), state(rec["state"]), rec.get("node") or "-", rec.get("reason") or "")
    _out().print(hist)
    if task.get("result") is not None:
        _out().print("[bold]result[/]")
        _out().print(task["result"], markup=False)
    log = task.get("log")
    if log:
        extra = f", last {len(log['tail'] or '')} bytes shown" if log.get("truncated") else ""
        _out().print(f"[bold]log tail[/] [dim](attempt {log.get('attempt')} on {log.get('node')}, {log.get('size')} bytes"
                     f"{extra}; full log at {log.get('path')} on that node)[/]")
        _out().print(log.get("tail") or "", markup=False, end="")


def _retry_text(task: dict[str, Any]) -> str | None:
    """The task's retry policy in a few words (docs/flow/retries.md), or None."""
    r = task.get("retry")
    bits = [f"delay {r['delay']:g}s x{r['backoff']:g} up to {r['max_delay']:g}s" + (", jitter" if r.get("jitter") else "")
            ] if r else []
    bits += [f"{name} {task[name]}" for name in ("retry_on", "fail_on") if task.get(name)]
    return "; ".join(bits) or None


def _clock(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def alarm_lines(alarms: list[dict[str, str]]) -> list[str]:
    """One warning line per raised etcd alarm, with what to do about NOSPACE."""
    lines = []
    for a in alarms:
        line = f"[bold red]etcd alarm: {a['alarm']}[/] (member {a['member']})"
        if a["alarm"] == "NOSPACE":
            line += ": etcd refuses writes; free space with conductor gc --keep DURATION --compact --defrag --disarm"
        lines.append(line)
    return lines


def clock(node: dict[str, Any]) -> str:
    """A node's clock against the cluster's: ``+0.3s``, ``+8d SKEWED`` (red), ``-`` not judged."""
    offset = node.get("clock_offset")
    if offset is None:
        return "-"
    text = ("-" if offset < 0 else "+") + span(abs(offset))
    return f"[bold red]{text} SKEWED[/]" if node.get("clock_skewed") else text


def renewal(node: dict[str, Any]) -> str:
    """The last lease renewal's round trip and the worst in the last minute, in ms."""
    last, worst = node.get("renewal_ms"), node.get("renewal_max_ms")
    if last is None and worst is None:
        return "-"
    return "/".join("-" if v is None else f"{v:.0f}" for v in (last, worst)) + "ms"


def nodes_table(nodes: list[dict[str, Any]], alarms: list[dict[str, str]] | None = None) -> None:
    for line in alarm_lines(alarms or []):
        _out().print(line)
    if not nodes:
        _out().print("[dim]no live nodes[/]")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "HOST", "RUNNING", "LABELS", "CPUS", "MEMORY FREE", "LOAD", "UP", "CLOCK", "RENEW",
                "VERSION"):
        table.add_column(col)
    for n in nodes:
        labels = ",".join(f"{k}={v}" for k, v in (n.get("labels") or {}).items()) or "-"
        table.add_row(n.get("name", "?"), f"{n.get('host')} pid {n.get('pid')}", f"{n['running']}/{n.get('slots')}",
                      labels, str(n.get("cpus")), f"{size(n.get('memory_available'))} of {size(n.get('memory'))}",
                      f"{n.get('load', 0):.2f}", age(n.get("started")), clock(n), renewal(n), n.get("version", "?"))
    _out().print(table)
