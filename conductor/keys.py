"""Every key and prefix of the keyspace, in one place.

All keys live under a namespace (default ``/conductor/``). ``docs/keyspace.md`` documents the same
table for other tools; a test checks the two agree. The ``q/`` prefix holds what every node
watches in one stream: jobs, layers and the tasks themselves (a QUEUED task is the queue entry, a
RUNNING one the claim), live leases, kill requests and pause markers, so that the events of one
revision arrive together. A user's jobs, layers and tasks share one prefix (``q/u/<user>/``), so a
user under etcd auth can follow all of them in one ordered watch too.

Everything a user owns lives under a prefix of its own (``users/<user>/``, ``q/u/<user>/``,
``q/<kind>/<user>/``, ``active/<user>/``...), so etcd's role-based access control can grant each user exactly their
prefixes (:mod:`conductor.roles` builds the grants from this table). Whoever reads a key takes the
owner from the key's path, never from its value: the path is what etcd checked.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "/conductor/"

# name -> (pattern, lease-bound?, what it holds). The docs' table is checked against this.
LAYOUT: dict[str, tuple[str, bool, str]] = {
    "node": ("nodes/<node>", True, "node info: host, pid, version, labels, slots, facts"),
    "alive": ("q/alive/<lease>", True, "exists while a node's lease lives; every claim on that lease is fenced by it"),
    "kill": ("q/kills/<user>/<task>", False, "a request to stop a running task (kill or skip), for its node"),
    "paused": ("q/paused/<user>/<id>", False, "exists while a job, layer or task is paused"),
    "job": ("q/u/<user>/jobs/<job>", False, "job spec + state"),
    "layer": ("q/u/<user>/layers/<layer>", False, "layer spec + state"),
    "task": ("q/u/<user>/tasks/<task>", False, "task spec + state + history, from its first claim or change on"),
    "chunk": ("q/u/<user>/chunks/<layer>/<first>", False, "the specs of up to 1,000 consecutive tasks of a layer"),
    "result": ("users/<user>/results/<task>", False, "result bytes (capped)"),
    "log": ("users/<user>/logs/<task>", False, "log tail of the latest attempt (capped)"),
    "count": ("users/<user>/counts/<job>/<writer>", False,
              "running and finished tasks of a job by layer and state, one writer's part"),
    "secrets": ("users/<user>/secrets/<job>", False, "a job's secret inputs, sealed with the cluster's public key"),
    "template": ("templates/<user>/<name>", False, "a user's stored template: a job file with inputs and triggers"),
    "shared_template": ("public/templates/<name>", False, "a template an admin published for every user (read-only to users)"),
    "schedule": ("schedules/<user>/<name>", False, "a user's cron rule that posts one of their templates"),
    "fire": ("fires/<user>/<schedule>/<tick>", False, "one per tick: the first node to create it fires it"),
    "active": ("active/<user>/<job>", False, "exists while a job is not finished"),
    "pending": ("pending/<user>/<job>", False, "a big job being posted in chunks; its head deletes it (value: user, at)"),
    "outbox": ("outbox/<user>/<job>/<entry>", False, "a message to send, written when a job or layer ends"),
    "join": ("joins/<user>/<template>/<key>", False, "the messages a join template has received this round"),
    "account": ("accounts/<user>", False, "a user Conductor knows: name, admin or not, since when"),
    "seal_public": ("public/seal", False, "the cluster's public key that secret inputs are sealed with"),
    "seal_private": ("cluster/seal", False, "the cluster's private key that opens sealed secrets (node account only)"),
    "leader": ("leaders/<role>", True, "which node does a cluster-wide chore"),
    "meta": ("meta/<name>", False, "cluster bookkeeping (the last compaction)"),
    "memo": ("memo/<user>/<key>", False, "a cached task result: which run, when, its TTL and result (taskcache.py)"),
    "loop_stop": ("loops/<user>/stop/<template>", False, "a loop guard's record: why a message chain or template was stopped"),
    "loop_rate": ("loops/<user>/rate/<template>", False, "jobs messages posted from a template this minute (max_rate)"),
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

    # ---- cluster (nodes and admins only) --------------------------------------------------
    def node(self, name: str = "") -> str:
        return self._k(f"nodes/{name}")

    def leader(self, role: str) -> str:
        return self._k(f"leaders/{role}")

    def memo(self, user: str = "", key: str = "") -> str:
        return self._k(f"memo/{user}/{key}" if user else "memo/")

    def loop_stop(self, user: str = "", template: str = "") -> str:
        """``loops/<user>/stop/<template>``; without a user, the prefix of every user's loop keys."""
        return self._k(f"loops/{user}/stop/{template}" if user else "loops/")

    def loop_rate(self, user: str, template: str = "") -> str:
        return self._k(f"loops/{user}/rate/{template}")

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

    def account(self, user: str = "") -> str:
        return self._k(f"accounts/{user}")

    def seal_public(self) -> str:
        return self._k("public/seal")

    def seal_private(self) -> str:
        return self._k("cluster/seal")

    def public(self) -> str:
        return self._k("public/")

    # ---- a user's automation (one prefix per user under each kind) ------------------------
    def template(self, user: str, name: str = "") -> str:
        return self._k(f"templates/{user}/{name}")

    def shared_template(self, name: str = "") -> str:
        return self._k(f"public/templates/{name}")

    def schedule(self, user: str = "", name: str = "") -> str:
        """``schedules/<user>/<name>``; without a user, the prefix of every user's schedules."""
        return self._k(f"schedules/{user}/{name}" if user else "schedules/")

    def fire(self, user: str, schedule: str, tick: float | None = None) -> str:
        return self._k(f"fires/{user}/{schedule}/" + ("" if tick is None else f"{int(tick):012d}"))

    def outbox(self, user: str = "", rest: str = "") -> str:
        """``outbox/<user>/<rest>``; without a user, the prefix of every user's outbox."""
        return self._k(f"outbox/{user}/{rest}" if user else "outbox/")

    def join(self, user: str, template: str, key: str = "") -> str:
        return self._k(f"joins/{user}/{template}/{key}")

    def active(self, user: str = "", job: str = "") -> str:
        """``active/<user>/<job>``; without a user, the prefix of every user's active jobs."""
        return self._k(f"active/{user}/{job}" if user else "active/")

    def pending(self, user: str = "", job: str = "") -> str:
        return self._k(f"pending/{user}/{job}" if user else "pending/")

    # ---- the watched stream: q/<kind>/<user>/<id> -----------------------------------------------
    def stream(self) -> str:
        return self._k("q/")

    def alive(self, lease: int | None = None) -> str:
        """``q/alive/<lease>``: a node's liveness in the stream; without a lease, the prefix."""
        return self._k("q/alive/" + ("" if lease is None else lease_hex(lease)))

    def kill(self, user: str, task: str = "") -> str:
        return self._k(f"q/kills/{user}/{task}")

    def paused(self, user: str, some_id: str = "") -> str:
        return self._k(f"q/paused/{user}/{some_id}")

    def q(self, kind: str) -> str:
        """``q/<kind>/``: one kind of the stream for every user (``kills``, ``paused``, ``u`` (every
        user's jobs, layers and tasks)...; nodes and admins)."""
        return self._k(f"q/{kind}/")

    # ---- a user's jobs, layers and tasks: in the stream, one prefix per user ----------------------
    def objects(self, user: str) -> str:
        """``q/u/<user>/``: a user's jobs, layers and tasks, one range (what their event feed follows)."""
        return self._k(f"q/u/{user}/")

    def job(self, user: str, job: str = "") -> str:
        return self._k(f"q/u/{user}/jobs/{job}")

    def layer(self, user: str, layer: str = "") -> str:
        return self._k(f"q/u/{user}/layers/{layer}")

    def task(self, user: str, task: str = "") -> str:
        """``q/u/<user>/tasks/<task>``: written by a task's first claim or change (conductor/chunks.py);
        while RUNNING, the claim."""
        return self._k(f"q/u/{user}/tasks/{task}")

    def chunk(self, user: str, layer: str, first: int | None = None) -> str:
        """``q/u/<user>/chunks/<layer>/<first>`` (7 digits, so chunks sort by number); without
        ``first``, the layer's chunk prefix."""
        return self._k(f"q/u/{user}/chunks/{layer}/" + ("" if first is None else f"{first:07d}"))

    def chunks(self, user: str, prefix: str = "") -> str:
        """``q/u/<user>/chunks/<prefix>``: the chunks of every layer whose id starts with ``prefix``."""
        return self._k(f"q/u/{user}/chunks/{prefix}")

    # ---- a user's objects ------------------------------------------------------------------
    def user(self, user: str = "") -> str:
        return self._k(f"users/{user}/" if user else "users/")

    def result(self, user: str, task: str = "") -> str:
        return self._k(f"users/{user}/results/{task}")

    def log(self, user: str, task: str = "") -> str:
        return self._k(f"users/{user}/logs/{task}")

    def secrets(self, user: str, job: str) -> str:
        return self._k(f"users/{user}/secrets/{job}")

    def count(self, user: str, job: str, writer: str = "") -> str:
        """``users/<user>/counts/<job>/<writer>``; without a writer, the job's prefix."""
        return self._k(f"users/{user}/counts/{job}/{writer}")

    # ---- parsing keys back -----------------------------------------------------------------
    def strip(self, key: str) -> str:
        """The key without the namespace."""
        return key[len(self.namespace):] if key.startswith(self.namespace) else key

    def split_stream(self, key: str) -> tuple[str, str, str]:
        """``q/<kind>/<user>/<id>`` or ``q/u/<user>/<kind>/<id>`` -> (kind, user, id) (kind
        ``jobs``, ``layers``, ``tasks`` for the latter); empty parts for a key of another shape."""
        kind, _, rest = self.strip(key)[2:].partition("/")
        user, _, name = rest.partition("/")
        if kind == "u":
            kind, _, name = name.partition("/")  # a chunk's name is <layer>/<first>
        return kind, user, name

    def last(self, key: str) -> str:
        """The part of a key after its last ``/`` (a job, task or schedule name)."""
        return key.rsplit("/", 1)[1]
