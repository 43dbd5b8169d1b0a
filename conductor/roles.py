"""Who may read and write which keys: the etcd roles Conductor makes, from one table.

With etcd auth on there are three kinds of account:

* **users** get a role of their own, ``conductor-user-<name>``, granting exactly their prefixes
  (``users/<name>/``, ``q/u/<name>/`` (jobs, layers, tasks), ``templates/<name>/``...): read and
  write where the CLI lets them change things, read only where only nodes write (concurrency
  slots, rate logs), nothing of anyone else's. A user's etcdctl can therefore do no more than their ``conductor`` commands.
* **the node account** (``conductor``, role ``conductor-node``) reads and writes the whole
  namespace: nodes run every user's tasks. It cannot manage users (no root role).
* **admins** hold etcd's ``root`` role: everything, and ``conductor user ...``.

``USER_ACCESS`` says, for every key kind of :data:`conductor.keys.LAYOUT`, what a user may do
with their own keys of that kind; ``docs/keyspace.md`` shows the same table and a test checks the
two agree. Pure: the grants are data; :mod:`conductor.accounts` writes them to etcd.
"""
from __future__ import annotations

from typing import NamedTuple

from .keys import LAYOUT, Keys, prefix_end

READ, WRITE, READWRITE = 0, 1, 2  # etcd's authpb.Permission.Type
NODE_ROLE = "conductor-node"
NODE_USER = "conductor"
ROOT = "root"

# key kind -> what a user may do with their own keys of it: "rw", "r" or "" (nothing)
USER_ACCESS: dict[str, str] = {
    "node": "", "leader": "", "meta": "", "cluster_token": "", "seal_private": "", "memo": "",
    "kill": "rw", "paused": "rw", "alive": "",
    "job": "rw", "layer": "rw", "task": "rw", "chunk": "rw", "result": "rw", "log": "rw", "count": "rw", "secrets": "rw",
    "template": "rw", "schedule": "rw", "fire": "rw", "active": "rw", "pending": "rw", "outbox": "rw",
    "join": "rw", "shared_template": "r", "seal_public": "r", "account": "r", "loop_stop": "rw", "loop_rate": "rw",
    "conc": "r", "rate": "r",  # cluster-wide, written by nodes only: users may see who holds a key
}
_PERM = {"rw": READWRITE, "r": READ}


class Grant(NamedTuple):
    perm: int
    key: str
    range_end: str  # "" for one key

    @property
    def label(self) -> str:
        kind = {READ: "read", WRITE: "write", READWRITE: "readwrite"}[self.perm]
        return f"{kind} {self.key}" + ("*" if self.range_end else "")


def user_role(user: str) -> str:
    return f"conductor-user-{user}"


def _scope(keys: Keys, pattern: str, user: str) -> tuple[str, str]:
    """The key (no range end) or prefix (with one) that ``pattern`` covers for ``user``: the
    pattern with ``<user>`` filled in, cut before the first other placeholder."""
    filled = pattern.replace("<user>", user)
    cut = filled.find("<")
    if cut < 0:
        return keys.namespace + filled, ""
    prefix = keys.namespace + filled[:cut]
    return prefix, prefix_end(prefix)


def user_grants(keys: Keys, user: str) -> list[Grant]:
    """What ``user``'s role grants in this namespace, one grant per key kind they may touch."""
    return user_grants_from(keys, user, USER_ACCESS)


def user_grants_from(keys: Keys, user: str, access_of: dict[str, str]) -> list[Grant]:
    """The grants a user gets from an access table (``USER_ACCESS``, or the docs' copy in tests)."""
    # users/<user>/ and q/u/<user>/ (jobs, layers, tasks): every kind under them is read-write,
    # each granted as one range (a user's event feed watches all of q/u/<user>/ at once)
    own = (keys.user(user), keys.objects(user))
    out = [Grant(READWRITE, prefix, prefix_end(prefix)) for prefix in own]
    for kind, (pattern, _, _) in LAYOUT.items():
        access = access_of.get(kind, "")
        key, end = _scope(keys, pattern, user)
        if access and not key.startswith(own):
            out.append(Grant(_PERM[access], key, end))
    return out


def node_grants(keys: Keys) -> list[Grant]:
    """The node account's role: the whole namespace, read and write."""
    return [Grant(READWRITE, keys.namespace, prefix_end(keys.namespace))]


def allows(grants: list[Grant], key: str, write: bool) -> bool:
    """Would these grants let a holder read (or write) ``key``? As etcd decides: a grant covers a
    key when it is that key, or the key is in its range."""
    for g in grants:
        if write and g.perm == READ:
            continue
        if g.key == key if not g.range_end else g.key <= key < g.range_end:
            return True
    return False


def kind_of(keys: Keys, key: str) -> str | None:
    """The LAYOUT kind a key is of (the first pattern it fits), or None: an undocumented key."""
    rest = keys.strip(key).split("/")
    for kind, (pattern, _, _) in LAYOUT.items():
        parts = pattern.split("/")
        if len(parts) == len(rest) and all(p == r or (p.startswith("<") and r) for p, r in zip(parts, rest)):
            return kind
    return None


def valid_name(name: str) -> str | None:
    """Why ``name`` cannot be a Conductor user name, or None: it becomes part of keys and a role."""
    if not name or len(name) > 64:
        return "must be 1 to 64 characters"
    if not all(c.isalnum() or c in "._-" for c in name) or not name[0].isalnum():
        return "may hold letters, digits, '.', '_' and '-', and must start with a letter or digit"
    if name in (NODE_USER, ROOT):
        return "is reserved (etcd's root, and the node account)"
    return None
