"""Turning what people type into a job id: a full id, a unique prefix or suffix of one, or a name.

Job ids are 10 characters of posting time then 6 random ones, so ids posted seconds apart share
their first 8: a prefix needs about 10 typed characters, while a few of the random last ones
(``4xq2z``) are usually unique. A job's name names the newest of the caller's jobs with it.
Only jobs the caller may see are looked at: their own, then (nodes and admins) every account's.

Resolution order: a full id; else every job whose id starts or ends with the text (only when the
text could be part of an id); else the caller's newest job of that name. More than one id
matching is :class:`~conductor.errors.Ambiguous`, with up to five of the ids in the message.
Only reads are made; nothing here writes.
"""
from __future__ import annotations

from typing import Callable, Iterator

from . import codec, ids
from .errors import Ambiguous, InvalidSpec, NotFound
from .keys import Keys, prefix_end
from .store import Store

SHOWN = 5  # ids named in an Ambiguous message
PAGE = 1000  # job keys (keys only) per range read while scanning
NAME_PAGE = 100  # job values per range read while looking for a name (values can be large)


def split_id(text: str) -> list[tuple[str, str]]:
    """The ways to read ``text`` as (job part, ``.n`` or ``.n.m`` rest), most specific first.

    ``hello.1.0`` reads as job ``hello`` with ``.1.0``; as a name may itself hold dots and
    digits (``v1.2``), the shorter rests are tried after it."""
    text = text.strip()
    parts = text.split(".")
    out = []
    for n in (2, 1, 0):
        if len(parts) > n and all(p.isdigit() for p in parts[len(parts) - n:]):
            head = ".".join(parts[:len(parts) - n])
            if head:
                out.append((head, text[len(head):]))
    return out


def could_be_id(text: str) -> bool:
    """Could ``text`` be a job id or a part of one (id characters, not too long)?"""
    try:
        return "." not in text and ids.parse_id(text).kind == "job"
    except InvalidSpec:
        return False


def resolve_job(store: Store, keys: Keys, text: str, user: str,
                others: Callable[[], list[str]] | None = None) -> tuple[str, str]:
    """(job id, owner) of the job ``text`` names (see the module docstring), looked for among
    ``user``'s jobs first, then among the jobs of ``others()`` (the other accounts, for nodes and
    admins; it may raise PermissionDenied). Raises Ambiguous; NotFound when nothing matches, or
    InvalidSpec when ``text`` could not even be part of an id."""
    idlike = could_be_id(text)
    found = by_id(store, keys, text, [user]) if idlike else None
    if found is None:
        named = newest_named(store, keys, user, text)
        found = (named, user) if named else None
    if found is None and idlike and others is not None:
        found = by_id(store, keys, text, [u for u in others() if u != user])
    if found is not None:
        return found
    if not idlike:  # bad input rather than a missing job: it cannot be part of any id
        raise InvalidSpec("id", f"{text!r} is not a job, layer or task id, nor the name of one of your jobs")
    raise NotFound(f"no job {text} (no job id starts or ends with it, and none of your jobs has that name)")


def by_id(store: Store, keys: Keys, text: str, users: list[str]) -> tuple[str, str] | None:
    """(job, owner) of the one job of ``users`` whose id is, starts with or ends with ``text``;
    None if none. Raises Ambiguous."""
    if len(text) == ids.JOB_ID_LEN:
        for user in users:
            if store.get(keys.job(user, text)) is not None:
                return text, user
    matches = sorted({m for user in users for m in id_matches(store, keys, text, user)}, reverse=True)
    if len(matches) > 1:
        shown = ", ".join(job for job, _ in matches[:SHOWN]) + (", ..." if len(matches) > SHOWN else "")
        raise Ambiguous(f"{text} matches more than one job ({shown}); give more of the id")
    return matches[0] if matches else None


def id_matches(store: Store, keys: Keys, text: str, user: str) -> list[tuple[str, str]]:
    """(job, owner) of every job of ``user`` whose id starts or ends with ``text``.

    A prefix is one range read; a suffix needs every job id, read as keys only in pages."""
    start = keys.job(user, text)
    found = {keys.last(kv.key) for kv in store.range(start, prefix_end(start), limit=SHOWN + 1, keys_only=True).kvs}
    found |= {job for job in _job_ids(store, keys, user) if job.endswith(text)}
    return [(job, user) for job in found]


def _job_ids(store: Store, keys: Keys, user: str) -> Iterator[str]:
    for kv in store.iter_prefix(keys.job(user), page=PAGE, keys_only=True):
        yield keys.last(kv.key)


def newest_named(store: Store, keys: Keys, user: str, name: str) -> str | None:
    """The newest of ``user``'s jobs named ``name``: jobs are read newest first (ids sort by
    time) a page at a time, stopping at the first match."""
    prefix = keys.job(user)
    end = prefix_end(prefix)
    while True:
        res = store.range(prefix, end, limit=NAME_PAGE, descending=True)
        for kv in res.kvs:
            if codec.unpack(kv.value).get("name") == name:
                return kv.key.rsplit("/", 1)[1]
        if not res.more or not res.kvs:
            return None
        end = res.kvs[-1].key  # range_end is exclusive: the next page is everything before it
