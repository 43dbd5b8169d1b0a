"""Every Prometheus metric of Conductor (names ``conductor_*``), and the one-line calls that move them.

Two kinds:

* **Node-internal** (counters, histograms, gauges moved by the node's threads): tasks started and
  finished by outcome, claim-to-start and post-to-start latency, lease renewal latency, etcd
  request latency and errors, self-fencing events, schedule fires, and the sampled queue depth by
  priority, running tasks and free slots. A node writes them with prometheus_client's
  multiprocess mode into ``<data_dir>/metrics/<node>/`` (:func:`use_directory`, called by
  ``conductor run`` before anything is counted), and the process that serves ``/metrics`` (the
  node's ``conductor serve`` child) reads that directory (:func:`registry`). Each call is a
  lock and a write to a memory-mapped file: a few microseconds, cheap enough for every etcd request.
* **Read from etcd when scraped** (:class:`TasksByState`): tasks by state over the live jobs, from
  key counts (never by reading tasks), cached for a few seconds so many scrapers cost one read.

Metrics are defined on first use (:func:`_defs`), so :func:`use_directory` can still choose where
their values live; a process that never calls it (a test) keeps them in memory. A process whose
values no ``/metrics`` can ever read (a client such as the CLI: neither a node nor a node's child)
does not count its etcd requests, so it never loads prometheus_client, which is imported only when
a metric is first defined or served.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # imported where used: a client process (the CLI's start) never needs it
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("conductor.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ETCD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
SAMPLE_EVERY = 2.0  # seconds between samples of the node's queue and slots
TALLY_CACHE = 2.0  # seconds a scrape-time etcd reading is reused


@dataclass
class _Metrics:
    started: Counter
    finished: Counter
    claim_to_start: Histogram
    post_to_start: Histogram
    renewal: Histogram
    etcd_seconds: Histogram
    etcd_errors: Counter
    fenced: Counter
    fires: Counter
    queue_depth: Gauge
    running: Gauge
    free_slots: Gauge


_lock = threading.Lock()
_metrics: _Metrics | None = None
_directory: Path | None = None


def _define(registry: CollectorRegistry | None) -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    node = ["node"]
    return _Metrics(
        started=Counter("conductor_tasks_started", "Tasks this node started", node, registry=registry),
        finished=Counter("conductor_tasks_finished", "Task outcomes this node committed, by the state they "
                         "left the task in", [*node, "outcome"], registry=registry),
        claim_to_start=Histogram("conductor_claim_to_start_seconds", "From a task's claim to its process start",
                                 node, buckets=LATENCY_BUCKETS, registry=registry),
        post_to_start=Histogram("conductor_post_to_start_seconds", "From a job's post to the start of each of "
                                "its tasks", node, buckets=LATENCY_BUCKETS, registry=registry),
        renewal=Histogram("conductor_lease_renewal_seconds", "Round trip of the supervisor's lease renewals",
                          node, buckets=ETCD_BUCKETS, registry=registry),
        etcd_seconds=Histogram("conductor_etcd_request_seconds", "etcd requests, by kind", ["what"],
                               buckets=ETCD_BUCKETS, registry=registry),
        etcd_errors=Counter("conductor_etcd_request_errors", "etcd requests that failed, by kind and error",
                            ["what", "error"], registry=registry),
        fenced=Counter("conductor_self_fencing", "Times this node lost its session and killed its tasks",
                       node, registry=registry),
        fires=Counter("conductor_schedule_fires", "Schedule fires this node handled, by result",
                      [*node, "result"], registry=registry),
        queue_depth=Gauge("conductor_queue_depth", "Ready tasks this node sees, by priority",
                          [*node, "priority"], multiprocess_mode="liveall", registry=registry),
        running=Gauge("conductor_running_tasks", "Tasks running on this node", node,
                      multiprocess_mode="liveall", registry=registry),
        free_slots=Gauge("conductor_free_slots", "Free task slots of this node", node,
                         multiprocess_mode="liveall", registry=registry))


def _defs() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _define(None)  # the default registry: in memory, or the multiprocess files
    return _metrics


def use_directory(directory: Path) -> None:
    """Keep this process's metric values in ``directory`` (prometheus_client's multiprocess mode),
    for the serving process to collect. Files of earlier processes are removed first: a new node
    starts its counters at zero. Call before any metric is moved; a later call changes nothing."""
    from prometheus_client import values

    global _directory
    with _lock:
        if _metrics is not None or _directory is not None:
            return
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.db"):
            old.unlink(missing_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # read by prometheus_client's files
        values.ValueClass = values.MultiProcessValue()
        _directory = directory


def node_directory(data_dir: Path, node: str) -> Path:
    return data_dir / "metrics" / node


def directory() -> Path | None:
    """Where this process keeps its metric values (:func:`use_directory`), or None: in memory."""
    return _directory


# ---- the one-line calls ------------------------------------------------------------------------------


def task_started(node: str, claimed_at: float | None, posted_at: float | None, now: float) -> None:
    """A task's process was asked to start; ``claimed_at`` and ``posted_at`` are wall-clock stamps."""
    m = _defs()
    m.started.labels(node).inc()
    if claimed_at:
        m.claim_to_start.labels(node).observe(max(0.0, now - claimed_at))
    if posted_at:
        m.post_to_start.labels(node).observe(max(0.0, now - posted_at))


def tasks_finished(node: str, outcomes: Iterable[str]) -> None:
    """Outcomes committed (each the state it left its task in: COMPLETED, ERRORED, QUEUED...)."""
    m = _defs()
    for outcome in outcomes:
        m.finished.labels(node, outcome).inc()


def lease_renewed(node: str, rtt_ms: float) -> None:
    _defs().renewal.labels(node).observe(rtt_ms / 1000.0)


def self_fenced(node: str) -> None:
    _defs().fenced.labels(node).inc()


def schedule_fired(node: str, outcome: str | None) -> None:
    """A fire this node made: ``outcome`` as :func:`conductor.schedules.complete` says it (posted,
    skipped: why...), counted by its first word; None (another node fired it) is not counted."""
    if outcome:
        _defs().fires.labels(node, outcome.split(":")[0].split(",")[0].strip()).inc()


def etcd_request(what: str, seconds: float, error: BaseException | None) -> None:
    """Count one etcd request, where a ``/metrics`` can read it (:func:`_served`); else nothing."""
    if not _served():
        return
    m = _defs()
    m.etcd_seconds.labels(what).observe(seconds)
    if error is not None:
        m.etcd_errors.labels(what, type(error).__name__).inc()


def _served() -> bool:
    """This process's values reach a ``/metrics``: it is a node (:func:`use_directory`) or a node's
    child (the multiprocess directory inherited in the environment). Values kept in memory are
    served by no one (:func:`registry` reads only the directory)."""
    return _directory is not None or "PROMETHEUS_MULTIPROC_DIR" in os.environ


# ---- sampled node state ------------------------------------------------------------------------------


class Sampler:
    """A daemon thread that sets the node's gauges every :data:`SAMPLE_EVERY` seconds: sampling
    keeps them off the claim and finish paths. ``read()`` returns (depth by priority, running,
    free slots); it must not block."""

    def __init__(self, node: str, read: Callable[[], tuple[dict[int, int], int, int]], stop: threading.Event):
        self.node = node
        self.read = read
        self.stop = stop
        self._seen: set[int] = set()

    def start(self) -> None:
        threading.Thread(target=self._run, name="metrics", daemon=True).start()

    def sample(self) -> None:
        m = _defs()
        depth, running, free = self.read()
        for priority in self._seen - set(depth):
            m.queue_depth.labels(self.node, str(priority)).set(0)  # drained: say 0, not the last figure
        for priority, count in depth.items():
            m.queue_depth.labels(self.node, str(priority)).set(count)
        self._seen = set(depth)
        m.running.labels(self.node).set(running)
        m.free_slots.labels(self.node).set(free)

    def _run(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY):
            try:
                self.sample()
            except RuntimeError:  # the queue changed size while read: the next sample has it
                continue


# ---- serving -----------------------------------------------------------------------------------------


class TasksByState:
    """A collector: ``conductor_tasks{state}`` over every user's running jobs, read from etcd's key
    counts when scraped (cached :data:`TALLY_CACHE` seconds). ``count`` returns the summed counts;
    an error leaves the metric out of that scrape rather than failing it."""

    def __init__(self, count: Callable[[], dict[str, int]]):
        self.count = count
        self._cached: tuple[float, dict[str, int]] = (0.0, {})
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Any]:
        with self._lock:
            at, counts = self._cached
            if time.monotonic() - at > TALLY_CACHE:
                try:
                    counts = self.count()
                except Exception as exc:  # noqa: BLE001 - etcd away: the scrape still has the node's metrics
                    log.warning("conductor_tasks left out of this scrape: %s", exc)
                    return []
                self._cached = (time.monotonic(), counts)
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("conductor_tasks", "Tasks of running jobs by state (from etcd)", labels=["state"])
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        return [family]


def registry(directory: Path | None, extra: Iterable[Any] = ()) -> CollectorRegistry:
    """The registry ``/metrics`` serves: the node's files in ``directory`` (if any) and ``extra``
    collectors (such as :class:`TasksByState`)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    reg = CollectorRegistry()
    if directory is not None and directory.is_dir():
        MultiProcessCollector(reg, path=str(directory))
    for collector in extra:
        reg.register(collector)
    return reg
