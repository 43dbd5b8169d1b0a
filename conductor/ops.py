"""Descriptions of etcd operations, free of any client library.

Modules that build transactions use these; only ``store`` turns them into requests. Compares follow
etcd's rules: a compare with ``range_end`` must hold for every key in the range, and an empty range
compares as one key with all revisions 0 (so ``range_empty`` is ``version == 0`` over the range).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .keys import prefix_end


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    range_end: str | None = None

    @classmethod
    def prefix(cls, prefix: str) -> "Delete":
        return cls(prefix, prefix_end(prefix))


@dataclass(frozen=True)
class Get:
    key: str
    range_end: str | None = None
    count_only: bool = False
    keys_only: bool = False
    limit: int = 0
    descending: bool = False  # by key, last first (with ``limit``: the range's last keys)

    @classmethod
    def prefix(cls, prefix: str, **kw: Any) -> "Get":
        return cls(prefix, prefix_end(prefix), **kw)

    @classmethod
    def count(cls, prefix: str) -> "Get":
        return cls(prefix, prefix_end(prefix), count_only=True)


@dataclass(frozen=True)
class Compare:
    key: str
    target: str  # "mod", "create", "version", "value", "lease"
    op: str  # "==", "!=", "<", ">"
    value: Any
    range_end: str | None = None


@dataclass(frozen=True)
class Txn:
    """A (possibly nested) transaction: ``success`` runs when every compare holds."""

    compare: Sequence[Compare] = ()
    success: Sequence["Op"] = ()
    failure: Sequence["Op"] = ()


Op = Put | Delete | Get | Txn


def mod_is(key: str, revision: int) -> Compare:
    return Compare(key, "mod", "==", revision)


def created_at(key: str, revision: int) -> Compare:
    """The key exists and was created at ``revision``: the fencing compare of a claim."""
    return Compare(key, "create", "==", revision)


def absent(key: str) -> Compare:
    return Compare(key, "version", "==", 0)


def present(key: str) -> Compare:
    return Compare(key, "version", ">", 0)


def range_empty(prefix: str) -> Compare:
    return Compare(prefix, "version", "==", 0, prefix_end(prefix))


# ---- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KV:
    """One key as read, with the revisions that make it an etag and a fencing token."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class RangeResult:
    kvs: list[KV]
    count: int
    more: bool
    revision: int


@dataclass(frozen=True)
class Event:
    kind: str  # "put" or "delete"
    kv: KV
    prev: KV | None = None


@dataclass
class TxnResult:
    """``responses`` holds, per op of the branch taken: a RangeResult for a Get, the number of
    deleted keys for a Delete, None for a Put, and a nested TxnResult for a Txn."""

    succeeded: bool
    revision: int
    responses: list[Any] = field(default_factory=list)
