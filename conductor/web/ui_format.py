"""How the web pages write times, durations, sizes and progress: pure functions, Jinja filters.

No etcd and no Starlette here, so the rules have unit tests of their own (tests/test_web_ui.py).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from .. import states

# the order a progress bar stacks its segments in: done work first, waiting work last
BAR_STATES = ("completed", "skipped", "errored", "running", "queued", "pending")
# what each button may do to an object in a state (the Control refuses the rest anyway: this only
# keeps buttons that cannot work off the page)
ACTIONS_BY_STATE = {
    states.PENDING: ("pause", "kill", "skip"),
    states.QUEUED: ("pause", "kill", "skip"),
    states.RUNNING: ("pause", "kill", "skip"),
    states.ERRORED: ("retry", "skip"),
    states.COMPLETED: (),
    states.SKIPPED: ("retry",),
}


def when(ts: float | None) -> str:
    """``2026-11-29 18:02:11 UTC``, or an en dash for no time."""
    if not ts:
        return "–"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """``0.4s``, ``12s``, ``3m 05s``, ``2h 01m``, ``3d 4h``."""
    if seconds is None:
        return "–"
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m {sec:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def ago(ts: float | None, now: float | None = None) -> str:
    """``5s ago``, ``in 3m 00s`` (a time to come, e.g. a schedule's next fire)."""
    if not ts:
        return "–"
    delta = (now if now is not None else time.time()) - ts
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def took(item: dict[str, Any], now: float | None = None) -> str:
    """How long a job, layer or task ran (so far, while it runs)."""
    start, end = item.get("started"), item.get("ended")
    if not start:
        return "–"
    return duration((end or (now if now is not None else time.time())) - start)


def size(n: int | None) -> str:
    """``512 B``, ``3.2 KiB``, ``24 GiB``."""
    if n is None:
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 10 else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def bar(counts: dict[str, int]) -> list[tuple[str, float, int]]:
    """A progress bar's segments: (state, percent of the width, count), empty ones left out."""
    total = counts.get("total") or sum(counts.get(s, 0) for s in BAR_STATES)
    if not total:
        return []
    return [(s, round(100.0 * counts.get(s, 0) / total, 3), counts.get(s, 0)) for s in BAR_STATES if counts.get(s)]


def done_of(counts: dict[str, int]) -> str:
    """``12 / 40 done``: finished tasks (whatever their outcome) of all."""
    done = sum(counts.get(s, 0) for s in ("completed", "errored", "skipped"))
    return f"{done} / {counts.get('total', 0)} done"


def actions(item: dict[str, Any]) -> list[str]:
    """The buttons a job, layer or task in its state gets; pause becomes unpause when paused."""
    found = list(ACTIONS_BY_STATE.get(str(item.get("state")), ()))
    if item.get("paused_at") or item.get("paused"):
        found = ["unpause" if a == "pause" else a for a in found] or ["unpause"]
    if item.get("kind") in ("job", "layer") and item.get("state") == states.RUNNING:
        found.append("retry")  # errored tasks of a running layer with on_error: continue
    return found


def short(some_id: str) -> str:
    """A task's or layer's id without its job part (``.0.12``), for tables inside the job page."""
    head, dot, rest = some_id.partition(".")
    return f".{rest}" if dot else head


FILTERS = {"when": when, "duration": duration, "ago": ago, "took": took, "size": size, "bar": bar,
           "done_of": done_of, "actions": actions, "short": short}
