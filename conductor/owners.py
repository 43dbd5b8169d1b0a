"""Who owns a job, and which users Conductor knows.

A job's owner is in its keys' paths (``users/<owner>/jobs/<job>``) and nowhere else that is shared:
there is no cluster-wide index a user could write into, so etcd's access control alone keeps
users apart. A user looks only under their own prefix. Nodes and admins find the owner of a bare
job id by asking every known account (``accounts/<user>``) in a few reads.

Accounts are written by ``conductor user add`` (and ``auth enable``); without etcd auth, a user's
first post writes theirs, so admins' lookups and ``show --all-users`` know every poster.
"""
from __future__ import annotations

import threading
from typing import Any

from . import codec, model
from .errors import NotFound
from .keys import Keys
from .ops import Get, Op, Put

READ_GROUP = 100  # job keys asked per read (etcd takes up to 128 ops per request)
_known: set[tuple[int, str]] = set()  # (id of store, account key) seen to exist: never asked again
_lock = threading.Lock()


def users(store: Any, keys: Keys) -> list[str]:
    """Every account's name, sorted. Raises PermissionDenied for a user who is not an admin."""
    return sorted(keys.last(kv.key) for kv in store.iter_prefix(keys.account(), keys_only=True))


def find(store: Any, keys: Keys, job_id: str, first: str | None = None) -> str:
    """The owner of ``job_id``: ``first`` if it owns it, else the account that does. Raises
    NotFound, PermissionDenied (a user may only look under their own prefix)."""
    if first and store.get(keys.job(first, job_id)) is not None:
        return first
    names = [u for u in users(store, keys) if u != first]
    for start in range(0, len(names), READ_GROUP):
        group = names[start:start + READ_GROUP]
        res = store.read([Get(keys.job(u, job_id), keys_only=True) for u in group])
        for user, resp in zip(group, res.responses):
            if resp.kvs:
                return user
    raise NotFound(f"no job {job_id}")


def register_ops(store: Any, keys: Keys, user: str) -> list[Op]:
    """The put of ``accounts/<user>`` when it does not exist yet (a first post without etcd
    auth), else nothing. One read per process and user."""
    key = keys.account(user)
    with _lock:
        if (id(store), key) in _known:
            return []
    if store.get(key) is not None:
        with _lock:
            _known.add((id(store), key))
        return []
    return [Put(key, codec.pack({"user": user, "admin": False, "at": model.now(), "by": "post"}))]
