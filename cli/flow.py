"""``conductor keys``: concurrency keys (holders, waiters) and rate keys (recent starts, waiters)."""
from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from rich.table import Table

from . import render
from .common import Etcd, Json, Namespace, _client, app


def _who(entry: dict[str, Any]) -> str:
    if entry["kind"] == "concurrency":
        return ", ".join(f"{h['task']} on {h['node']}" for h in entry["holders"]) or "-"
    if entry.get("next_start"):
        return f"next start in {max(0.0, entry['next_start'] - time.time()):.1f}s"
    return "may start now"


def _use(entry: dict[str, Any]) -> str:
    if entry["kind"] == "concurrency":
        return f"{entry['held']} of {entry['limit']} held" + (f" ({entry['strategy']})" if entry.get("strategy") else "")
    return f"{entry['recent']} of {entry['limit']} per {entry['per']:g}s"


@app.command()
def keys(etcd: Etcd = None, namespace: Namespace = None, json: Json = False) -> None:
    """List concurrency keys with their holders and waiters, and rate keys with their recent starts."""
    with _client(etcd, namespace) as client:
        found = client.flow_keys()
    if json:
        render.print_json(found)
        return
    if not found:
        render.out.print("[dim]no concurrency or rate keys in use[/]")
        return
    table = Table(box=None, pad_edge=False)
    for col in ("KIND", "KEY", "USE", "HOLDERS / NEXT", "WAITING"):
        table.add_column(col)
    for entry in found:
        table.add_row(entry["kind"], escape(entry["key"]), _use(entry), escape(_who(entry)), str(entry["waiting"]))
    render.out.print(table)
