"""Every key and prefix of the keyspace, in one place.

All keys live under a namespace (default ``/conductor/``). ``docs/keyspace.md`` documents the same
table for other tools; a test checks the two agree. The ``q/`` prefix holds what every node
watches in one stream: ready markers, claims, run markers and pause markers, so that the events of
one revision (a claim deleted together with its run marker, say) arrive together.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "/conductor/"

# name -> (pattern, lease-bound?, what it holds). The docs' table is checked against this.
LAYOUT: dict[str, tuple[str, bool, str]] = {
    "node": ("nodes/<node>", True, "node info: host, pid, version, labels, slots, facts"),
    "ready": ("q/ready/<task>", False, "exists while the task may be claimed; value = the task"),
    "claim": ("q/claims/<task>", True, "who runs the task now; create_revision = fencing token"),
    "run": ("q/runs/<task>", False, "durable twin of a claim (value names the lease): without its claim = orphan"),
    "kill": ("q/kills/<task>", False, "a request to stop a running task (kill or skip), for its node"),
    "paused": ("q/paused/<id>", False, "exists while a job, layer or task is paused"),
    "job": ("users/<user>/jobs/<job>", False, "job spec + state"),
    "layer": ("users/<user>/layers/<layer>", False, "layer spec + state"),
    "task": ("users/<user>/tasks/<task>", False, "task spec + state + history"),
    "result": ("users/<user>/results/<task>", False, "result bytes (capped)"),
    "log": ("users/<user>/logs/<task>", False, "log tail of the latest attempt (capped)"),
    "tally": ("users/<user>/tally/<job>/<state>/<task>", False, "one per finished task, by state"),
    "index": ("index/<job>", False, "which user owns a job"),
    "active": ("active/<job>", False, "exists while a job is not finished"),
    "pending": ("pending/<job>", False, "a big job being posted in chunks; its head deletes it (value: user, at)"),
    "leader": ("leaders/<role>", True, "which node does a cluster-wide chore"),
    "meta": ("meta/<name>", False, "cluster bookkeeping (the last compaction)"),
    "secrets": ("users/<user>/secrets/<job>", False, "a job's secret inputs; read only by the node running it"),
    "template": ("templates/<name>", False, "a stored template: a job file with inputs and triggers"),
    "schedule": ("schedules/<name>", False, "a cron rule that posts a template"),
    "fire": ("fires/<schedule>/<tick>", False, "one per tick: the first node to create it fires it"),
    "outbox": ("outbox/<job>/<entry>", False, "a message to send, written when a job or layer ends"),
    "join": ("joins/<template>/<key>", False, "the messages a join template has received this round"),
    "cluster_token": ("cluster/tokens/<id>", True, "a join token of a laptop cluster: its secret's SHA-256, expiry"),
    "conc": ("conc/<key>/<n>", True, "slot n of a concurrency key, held by a running task on its runner's lease"),
    "rate": ("rates/<key>", False, "a rate key's recent start times (its sliding window), compared and swapped by claims"),
}


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with ``prefix`` (etcd's range_end)."""
    data = prefix.encode()
    for i in range(len(data) - 1, -1, -1):
        if data[i] < 0xFF:
            return (data[:i] + bytes([data[i] + 1])).decode("latin-1")
    return "\0"


def lease_hex(lease_id: int) -> str:
    return f"{lease_id:016x}"


@dataclass(frozen=True)
class Keys:
    """Builds keys under one namespace. Methods named after ``LAYOUT`` entries."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        ns = self.namespace if self.namespace.endswith("/") else self.namespace + "/"
        if not ns.startswith("/"):
            ns = "/" + ns
        object.__setattr__(self, "namespace", ns)

    def _k(self, rest: str) -> str:
        return self.namespace + rest

    # ---- cluster -------------------------------------------------------------------------
    def node(self, name: str = "") -> str:
        return self._k(f"nodes/{name}")

    def leader(self, role: str) -> str:
        return self._k(f"leaders/{role}")

    def secrets(self, user: str, job: str) -> str:
        return self._k(f"users/{user}/secrets/{job}")

    def template(self, name: str = "") -> str:
        return self._k(f"templates/{name}")

    def schedule(self, name: str = "") -> str:
        return self._k(f"schedules/{name}")

    def fire(self, schedule: str, tick: float | None = None) -> str:
        return self._k(f"fires/{schedule}/" + ("" if tick is None else f"{int(tick):012d}"))

    def outbox(self, rest: str = "") -> str:
        return self._k(f"outbox/{rest}")

    def join(self, template: str, key: str = "") -> str:
        return self._k(f"joins/{template}/{key}")

    def cluster_token(self, token_id: str = "") -> str:
        return self._k(f"cluster/tokens/{token_id}")

    def conc(self, key: str = "", n: int | None = None) -> str:
        """A concurrency slot; with no ``n`` the prefix of the key's slots (of all keys: no key)."""
        if not key:
            return self._k("conc/")
        return self._k(f"conc/{key}/" + ("" if n is None else str(n)))

    def rate(self, key: str = "") -> str:
        return self._k(f"rates/{key}")

    def meta(self, name: str) -> str:
        return self._k(f"meta/{name}")

    def index(self, job: str = "") -> str:
        return self._k(f"index/{job}")

    def active(self, job: str = "") -> str:
        return self._k(f"active/{job}")

    def pending(self, job: str = "") -> str:
        return self._k(f"pending/{job}")

    # ---- the watched stream ----------------------------------------------------------------
    def stream(self) -> str:
        return self._k("q/")

    def ready(self, task: str = "") -> str:
        return self._k(f"q/ready/{task}")

    def claim(self, task: str = "") -> str:
        return self._k(f"q/claims/{task}")

    def run(self, task: str = "") -> str:
        return self._k(f"q/runs/{task}")

    def kill(self, task: str = "") -> str:
        return self._k(f"q/kills/{task}")

    def paused(self, some_id: str = "") -> str:
        return self._k(f"q/paused/{some_id}")

    # ---- a user's objects ------------------------------------------------------------------
    def user(self, user: str) -> str:
        return self._k(f"users/{user}/")

    def job(self, user: str, job: str = "") -> str:
        return self._k(f"users/{user}/jobs/{job}")

    def layer(self, user: str, layer: str = "") -> str:
        return self._k(f"users/{user}/layers/{layer}")

    def task(self, user: str, task: str = "") -> str:
        return self._k(f"users/{user}/tasks/{task}")

    def result(self, user: str, task: str = "") -> str:
        return self._k(f"users/{user}/results/{task}")

    def log(self, user: str, task: str = "") -> str:
        return self._k(f"users/{user}/logs/{task}")

    def tally(self, user: str, job: str, state: str = "", task: str = "") -> str:
        if not state:
            return self._k(f"users/{user}/tally/{job}/")
        return self._k(f"users/{user}/tally/{job}/{state}/{task}")

    # ---- parsing keys back -----------------------------------------------------------------
    def strip(self, key: str) -> str:
        """The key without the namespace."""
        return key[len(self.namespace):] if key.startswith(self.namespace) else key
