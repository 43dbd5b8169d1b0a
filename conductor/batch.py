"""etcd's request limits, and the one helper that splits writes to fit them.

etcd refuses a transaction of more than 128 operations (``--max-txn-ops``) and a request of more
than 1.5 MiB (``--max-request-bytes``). Every multi-key write in Conductor goes through
:func:`fit`, which groups operations (with the compares that must travel with them) by count and
by bytes, so no write is refused for its size: a write whose single item is too big for any
request raises :class:`TooLarge` before anything is sent.
"""
from __future__ import annotations

from .exitcodes import Exit

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

from .errors import ConductorError
from .ops import Compare, Delete, Get, Op, Put, Txn

MAX_TXN_OPS = 128  # etcd's default --max-txn-ops (compares count separately, with the same limit)
MAX_REQUEST_BYTES = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)
REQUEST_BUDGET = 1_300_000  # what one request may carry: room for framing and gRPC headers
COMPARE_BYTES = 48  # a compare's fixed cost besides its key


class TooLarge(ConductorError):
    """One item alone does not fit in an etcd request."""

    exit_code = Exit.BAD_INPUT


def op_size(op: Op) -> int:
    """Bytes an op adds to a request (an upper bound: key, value, range end and framing)."""
    if isinstance(op, Put):
        return len(op.key) + len(op.value) + 24
    if isinstance(op, Txn):
        return (sum(op_size(o) for o in (*op.success, *op.failure))
                + sum(compare_size(c) for c in op.compare) + 16)
    if isinstance(op, (Delete, Get)):
        return len(op.key) + 24 + (len(op.range_end) if op.range_end else 0)
    raise TypeError(f"not an etcd operation: {op!r}")


def compare_size(c: Compare) -> int:
    value = len(c.value) if isinstance(c.value, (bytes, str)) else 8
    return len(c.key) + (len(c.range_end) if c.range_end else 0) + value + COMPARE_BYTES


@dataclass
class Item:
    """Ops and compares that must land in the same transaction (one task's claim, say)."""

    ops: Sequence[Op] = ()
    compare: Sequence[Compare] = ()
    tag: object = None  # whatever the caller wants back with its group

    @property
    def size(self) -> int:
        return sum(op_size(o) for o in self.ops) + sum(compare_size(c) for c in self.compare)


@dataclass
class Group:
    """Items that fit in one transaction together, with room for ``reserve`` ops of the caller."""

    items: list[Item] = field(default_factory=list)
    size: int = 0
    n_ops: int = 0
    n_compare: int = 0

    @property
    def ops(self) -> list[Op]:
        return [op for item in self.items for op in item.ops]

    @property
    def compare(self) -> list[Compare]:
        return [c for item in self.items for c in item.compare]

    @property
    def tags(self) -> list[object]:
        return [item.tag for item in self.items]


def fit(items: Iterable[Item], *, reserve_ops: int = 0, reserve_compare: int = 0, reserve_bytes: int = 0,
        max_ops: int = MAX_TXN_OPS, budget: int = REQUEST_BUDGET) -> Iterator[Group]:
    """Group ``items`` in order into transactions under etcd's limits.

    ``reserve_*`` keep room in every group for ops, compares and bytes the caller adds to each
    transaction itself (a job's key written with every chunk, say). Raises :class:`TooLarge` when
    one item cannot fit even alone."""
    group = Group()
    op_room, cmp_room, byte_room = max_ops - reserve_ops, max_ops - reserve_compare, budget - reserve_bytes
    for item in items:
        size, n_ops, n_cmp = item.size, len(item.ops), len(item.compare)
        if n_ops > op_room or n_cmp > cmp_room or size > byte_room:
            raise TooLarge(f"one write of {n_ops} operations and {size} bytes does not fit in an etcd "
                           f"request ({op_room} operations, {byte_room} bytes)")
        if group.items and (group.n_ops + n_ops > op_room or group.n_compare + n_cmp > cmp_room
                            or group.size + size > byte_room):
            yield group
            group = Group()
        group.items.append(item)
        group.size += size
        group.n_ops += n_ops
        group.n_compare += n_cmp
    if group.items:
        yield group


def fit_ops(ops: Iterable[Op], **limits: int) -> Iterator[list[Op]]:
    """Plain ops (each its own item) in groups that fit; see :func:`fit`."""
    for group in fit((Item([op]) for op in ops), **limits):
        yield group.ops


def fits(ops: Sequence[Op], compare: Sequence[Compare] = ()) -> bool:
    """Would these ops and compares fit in one transaction?"""
    item = Item(ops, compare)
    return len(item.ops) <= MAX_TXN_OPS and len(item.compare) <= MAX_TXN_OPS and item.size <= REQUEST_BUDGET
