"""Placement as a pure rule: can a node ever hold a task, and why does a queued task wait?

A task's ``needs`` (see docs/jobs.md) are judged against a node's facts as its node key
``nodes/<name>`` advertises them: ``name``, ``slots``, ``cpus``, ``memory`` (total bytes),
``labels`` and ``containers`` (the Docker API version, or None); a number a node does not
advertise (``cpus`` when the OS cannot count them) is not held against it. :func:`fits` says whether the node
could hold the task at all; what the node has *free* at a given moment (slots not taken, memory
available) is the claim loop's own, per-claim check. :func:`why_waiting` explains, from the live
node keys, why no node can hold a task. Nothing here reads etcd or raises.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

Needs = dict[str, Any]
NodeInfo = dict[str, Any]
MOST_REASONS = 3  # per-node reasons listed when no single need explains the wait


def size_text(n: float) -> str:
    """Bytes for people, in powers of 1024: ``1 TiB``, ``23.4 GiB``, ``512 MiB``."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{_number(value)} {unit}"


def _number(value: float) -> str:
    """``2``, ``0.5``, ``23.4``: one decimal at most, no trailing ``.0``."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _cpus_text(n: float) -> str:
    return f"{_number(n)} CPU{'' if n == 1 else 's'}"


def _slots_text(n: float) -> str:
    return f"{_number(n)} slot{'' if n == 1 else 's'}"


def _name(node: NodeInfo) -> str:
    return str(node.get("name", "?"))


# ---- one need against one node: a reason in words, or None ----------------------------------------

def _node_named(needs: Needs, node: NodeInfo, container: bool) -> str | None:
    wanted = needs.get("node")
    if wanted is not None and _name(node) != wanted:
        return f"{_name(node)} is not node {wanted}"
    return None


def _container(needs: Needs, node: NodeInfo, container: bool) -> str | None:
    if container and not node.get("containers"):
        return f"{_name(node)} cannot run container tasks (no Docker API)"
    return None


def _slots(needs: Needs, node: NodeInfo, container: bool) -> str | None:
    wanted, has = needs.get("slots", 1), node.get("slots")
    if has is not None and wanted > has:
        return f"{_name(node)} has {_slots_text(has)}, the task needs {wanted}"
    return None


def _cpus(needs: Needs, node: NodeInfo, container: bool) -> str | None:
    wanted, has = needs.get("cpus"), node.get("cpus")
    if wanted is not None and has is not None and wanted > has:
        return f"{_name(node)} has {_cpus_text(has)}, the task needs {_number(wanted)}"
    return None


def _memory(needs: Needs, node: NodeInfo, container: bool) -> str | None:
    wanted, has = needs.get("memory"), node.get("memory")
    if wanted and has is not None and wanted > has:
        return f"{_name(node)} has {size_text(has)} of memory, the task needs {size_text(wanted)}"
    return None


def _labels(needs: Needs, node: NodeInfo, container: bool) -> str | None:
    labels = node.get("labels") or {}
    for key, value in (needs.get("labels") or {}).items():
        if labels.get(key) != value:
            return f"{_name(node)} has no label {key}={value}"
    return None


Check = Callable[[Needs, NodeInfo, bool], "str | None"]
CHECKS: tuple[Check, ...] = (_node_named, _container, _slots, _cpus, _memory, _labels)


def fits(needs: Needs, node: NodeInfo, *, container: bool = False) -> str | None:
    """None when ``node`` could hold a task with these ``needs`` (``container``: the task has an
    image), else the first reason it cannot, naming the node: ``n2 has no label gpu=yes``.

    Judges what the node *is* (slots, CPUs, total memory, labels, name, a Docker API), not what it
    has free now."""
    for check in CHECKS:
        reason = check(needs, node, container)
        if reason:
            return reason
    return None


# ---- one need against every live node: a reason for the cluster, or None ------------------------

def _largest(nodes: Sequence[NodeInfo], field: str) -> NodeInfo:
    return max(nodes, key=lambda n: (n.get(field) or 0, _name(n)))


def _short_of_slots(needs: Needs, nodes: Sequence[NodeInfo], container: bool) -> str | None:
    if all(_slots(needs, n, container) for n in nodes):
        most = _largest(nodes, "slots")
        return (f"no live node has {_slots_text(needs.get('slots', 1))}; "
                f"most is {_number(most.get('slots') or 0)} on {_name(most)}")
    return None


def _short_of_cpus(needs: Needs, nodes: Sequence[NodeInfo], container: bool) -> str | None:
    if all(_cpus(needs, n, container) for n in nodes):
        most = _largest(nodes, "cpus")
        return (f"no live node has {_cpus_text(needs['cpus'])}; "
                f"most is {_number(most.get('cpus') or 0)} on {_name(most)}")
    return None


def _short_of_memory(needs: Needs, nodes: Sequence[NodeInfo], container: bool) -> str | None:
    if all(_memory(needs, n, container) for n in nodes):
        most = _largest(nodes, "memory")
        return (f"no live node has {size_text(needs['memory'])} of memory; "
                f"largest is {size_text(most.get('memory') or 0)} on {_name(most)}")
    return None


def _short_of_labels(needs: Needs, nodes: Sequence[NodeInfo], container: bool) -> str | None:
    for key, value in (needs.get("labels") or {}).items():
        if not any((n.get("labels") or {}).get(key) == value for n in nodes):
            return f"no live node has label {key}={value}"
    return None


def _short_of_containers(needs: Needs, nodes: Sequence[NodeInfo], container: bool) -> str | None:
    if container and not any(n.get("containers") for n in nodes):
        return "no live node can run container tasks (none reaches a Docker API)"
    return None


CLUSTER_CHECKS: tuple[Callable[[Needs, Sequence[NodeInfo], bool], "str | None"], ...] = (
    _short_of_containers, _short_of_slots, _short_of_cpus, _short_of_memory, _short_of_labels)


def why_waiting(needs: Needs, live_nodes: Sequence[NodeInfo], *, container: bool = False) -> str | None:
    """Why no live node can hold a task with these ``needs``, as ``waiting: ...``; None when some
    live node could (the task then waits only for free slots or memory, or for a node to see it).

    One need no node meets is named with the best there is (``waiting: no live node has 1 TiB of
    memory; largest is 23 GiB on n2``); needs met only apart list each node's reason."""
    wanted = needs.get("node")
    if wanted is not None:
        named = [n for n in live_nodes if _name(n) == wanted]
        if not named:
            return f"waiting: node {wanted} is not live"
        reason = fits(needs, named[0], container=container)
        return f"waiting: {reason}" if reason else None
    if not live_nodes:
        return "waiting: no node is live"
    reasons = [fits(needs, n, container=container) for n in live_nodes]
    if any(r is None for r in reasons):
        return None
    for check in CLUSTER_CHECKS:
        reason = check(needs, live_nodes, container)
        if reason:
            return f"waiting: {reason}"
    listed = "; ".join(str(r) for r in reasons[:MOST_REASONS])
    more = f"; and {len(reasons) - MOST_REASONS} more" if len(reasons) > MOST_REASONS else ""
    return f"waiting: no live node has all the task needs: {listed}{more}"
