"""What a node may claim, as its cache holds it: queued task keys, and running layers' tasks that
have no key yet (they are what their chunk says: conductor/chunks.py).

Tasks are grouped by (priority, job, layer) and picked best group first. Within a group a node
picks at random among the first few tasks, so nodes racing for one layer rarely pick the same task,
while tasks still start roughly in posting order. A task with a key of its own comes before the
keyless ones of its group: it was queued again (a retry, an orphan of a lost node, a hand-back) or
changed by a user, and it waited before every task still waiting there. Groups are taken by
priority, then job id (posting order), so such a task also goes ahead of later jobs.
"""
from __future__ import annotations

import bisect
import itertools
import random
from collections import OrderedDict
from typing import Callable, Iterable, Iterator

from . import chunks, states
from .claims import Ready
from .model import Value

SCAN = 2000  # keyless tasks of one group a pick reads past at most (tasks this node cannot hold)
Group = tuple[int, str, str, str]  # (-priority, job, layer, user)


class Chunked:
    """A running layer's tasks without a key: the numbers of its committed chunks, less those that
    have a task key (``taken``), by priority, each task's spec kept packed in its chunk."""

    def __init__(self, layer: Value):
        self.layer = layer
        self._raw: dict[int, bytes] = {}  # first number -> the chunk's packed specs
        self._firsts: list[int] = []  # sorted
        self._count: dict[int, int] = {}  # first number -> how many specs
        self._priority: dict[int, int | None] = {}  # first -> the chunk's one priority (None: mixed)
        self._mixed: dict[int, int] = {}  # number -> priority, in mixed chunks only
        self.ranges: dict[int, list[tuple[int, int]]] = {}  # priority -> sorted (first, end) ranges
        self.left: dict[int, int] = {}  # priority -> numbers not taken
        self.taken: set[int] = set()
        self._cursor: dict[int, tuple[int, int]] = {}  # priority -> (range, number) before which all are taken
        self._specs: OrderedDict[int, list[Value]] = OrderedDict()  # a few chunks unpacked

    def add(self, first: int, specs: list[Value], raw: bytes) -> bool:
        """A committed chunk; False if it was added before (a chunk is written once)."""
        if first in self._raw:
            return False
        self._raw[first] = raw
        self._count[first] = len(specs)
        bisect.insort(self._firsts, first)
        priorities = [int(s.get("priority", 0)) for s in specs]
        if len(set(priorities)) == 1:
            self._priority[first] = priorities[0]
            self._range(priorities[0], first, first + len(specs))
        else:
            self._priority[first] = None
            for n, p in enumerate(priorities, first):
                self._mixed[n] = p
                self._range(p, n, n + 1)
        for n in range(first, first + len(specs)):
            if n in self.taken:
                self.left[self._priority_of(n)] -= 1
        return True

    def _range(self, priority: int, first: int, end: int) -> None:
        bisect.insort(self.ranges.setdefault(priority, []), (first, end))
        self._cursor.pop(priority, None)  # a range may have come in front of it
        self.left[priority] = self.left.get(priority, 0) + end - first

    def _chunk_of(self, number: int) -> int | None:
        at = bisect.bisect_right(self._firsts, number) - 1
        if at < 0:
            return None
        first = self._firsts[at]
        return first if number < first + self._count[first] else None

    def _priority_of(self, number: int) -> int:
        first = self._chunk_of(number)
        p = self._priority.get(first) if first is not None else None
        return p if p is not None else self._mixed.get(number, 0)

    def take(self, number: int) -> None:
        """Task ``number`` has a key now (claimed, or changed by a user): it is that key's."""
        if number in self.taken:
            return
        self.taken.add(number)
        if self._chunk_of(number) is not None:
            self.left[self._priority_of(number)] -= 1

    def total_left(self) -> int:
        return sum(self.left.values())

    def has(self, number: int) -> bool:
        return number not in self.taken and self._chunk_of(number) is not None

    def spec(self, number: int) -> Value:
        first = self._chunk_of(number)
        assert first is not None
        specs = self._specs.get(first)
        if specs is None:
            specs = chunks.read(self._raw[first])[1]
            self._specs[first] = specs
            if len(self._specs) > 4:
                self._specs.popitem(last=False)
        else:
            self._specs.move_to_end(first)
        return specs[number - first]

    def entry(self, number: int) -> Ready:
        """The task as its chunk gives it, QUEUED: a claim of it compares that it has no key."""
        task = chunks.task_of(self.layer, number, self.spec(number), states.QUEUED)
        return Ready(task, 0, task["id"])

    def numbers(self, priority: int) -> Iterator[int]:
        """The untaken numbers of one priority, in order. A number once taken stays taken (a task
        key is not deleted while its layer runs), so the taken ones in front are passed once: the
        next call starts after them (a new chunk of this priority starts it over)."""
        ranges = self.ranges.get(priority, [])
        at, n = self._cursor.get(priority, (0, 0))
        leading = True
        while at < len(ranges):
            first, end = ranges[at]
            n = max(n, first)
            while n < end:
                if n not in self.taken:
                    if leading:
                        self._cursor[priority] = (at, n)
                        leading = False
                    yield n
                n += 1
            at += 1
        if leading:
            self._cursor[priority] = (at, n)


class ReadyQueue:
    """Claimable tasks: queued task keys (explicit entries) and running layers' keyless tasks."""

    def __init__(self) -> None:
        self._groups: dict[Group, OrderedDict[str, Ready]] = {}
        self._where: dict[str, Group] = {}
        self._chunked: dict[str, Chunked] = {}  # layer id -> its keyless tasks, while it runs

    def __len__(self) -> int:
        return len(self._where) + sum(c.total_left() for c in self._chunked.values())

    def __contains__(self, task_id: str) -> bool:
        return self.get(task_id) is not None

    # ---- explicit entries: task keys ------------------------------------------------------------

    def put(self, entry: Ready) -> None:
        self.remove(entry.id)
        task = entry.task
        group = (-int(task.get("priority", 0)), task["job"], task["layer"], task["user"])
        bag = self._groups.setdefault(group, OrderedDict())
        bag[entry.id] = entry
        if task.get("attempts"):  # queued again (retry, orphan, hand-back): it was queued before the rest
            bag.move_to_end(entry.id, last=False)
        self._where[entry.id] = group

    def remove(self, task_id: str) -> Ready | None:
        group = self._where.pop(task_id, None)
        if group is None:
            return None
        bag = self._groups[group]
        entry = bag.pop(task_id)
        if not bag:
            del self._groups[group]
        return entry

    def get(self, task_id: str) -> Ready | None:
        """The entry of ``task_id``: its key's, or the one its chunk gives (built anew)."""
        group = self._where.get(task_id)
        if group:
            return self._groups[group][task_id]
        layer_id, _, number = task_id.rpartition(".")
        chunked = self._chunked.get(layer_id)
        if chunked is None or not number.isdigit() or not chunked.has(int(number)):
            return None
        return chunked.entry(int(number))

    def keyed(self, task_id: str) -> Ready | None:
        """The explicit entry of ``task_id`` (its queued task key), if any."""
        group = self._where.get(task_id)
        return self._groups[group][task_id] if group else None

    # ---- keyless tasks: running layers' chunks ----------------------------------------------------

    def chunked(self, layer_id: str) -> Chunked | None:
        return self._chunked.get(layer_id)

    def start(self, chunked: Chunked) -> None:
        self._chunked[chunked.layer["id"]] = chunked

    def stop(self, layer_id: str) -> Chunked | None:
        return self._chunked.pop(layer_id, None)

    def clear(self) -> None:
        self._groups.clear()
        self._where.clear()
        self._chunked.clear()

    # ---- picking ----------------------------------------------------------------------------------

    def _all_groups(self) -> list[Group]:
        groups = set(self._groups)
        for layer_id, c in self._chunked.items():
            groups.update((-p, c.layer["job"], layer_id, c.layer["user"]) for p, n in c.left.items() if n > 0)
        return sorted(groups)

    def pick(self, want: int, accept: Callable[[Ready], bool],
             skip_groups: Callable[[str, str, str], bool]) -> list[Ready]:
        """Up to ``want`` entries that ``accept`` takes, best priority first.

        In each group the task keys come first, then its keyless tasks; of each, a shuffled window
        of the first ones (so racing nodes rarely pick the same task), then the rest in order
        (keyless ones up to SCAN), so tasks this node cannot hold (a label it lacks) do not hide
        the ones behind them."""
        out: list[Ready] = []
        for group in self._all_groups():
            if len(out) >= want:
                break
            if skip_groups(group[3], group[1], group[2]):  # (user, job, layer)
                continue
            for entry in itertools.chain(_windowed(iter(self._groups.get(group, {}).values()), want),
                                         self._keyless(group, want)):
                if len(out) >= want:
                    break
                if accept(entry):
                    out.append(entry)
        return out

    def _keyless(self, group: Group, want: int) -> Iterator[Ready]:
        chunked = self._chunked.get(group[2])
        if chunked is None:
            return iter(())
        numbers = itertools.islice(chunked.numbers(-group[0]), SCAN)
        return (chunked.entry(n) for n in _windowed(numbers, want))

    def ids(self) -> Iterable[str]:
        """The ids of the explicit entries (queued task keys)."""
        return self._where.keys()

    def depth_by_priority(self) -> dict[int, int]:
        """Claimable tasks by priority, from the groups (a handful, not every task); for the
        queue-depth metric."""
        out: dict[int, int] = {}
        for (neg_priority, _job, _layer, _user), bag in list(self._groups.items()):
            out[-neg_priority] = out.get(-neg_priority, 0) + len(bag)
        for c in list(self._chunked.values()):
            for p, n in c.left.items():
                out[p] = out.get(p, 0) + n
        return out


def _windowed(items: Iterator, want: int) -> Iterator:
    """The first 4 x ``want`` + 8 of ``items`` shuffled, then the rest in order."""
    window = list(itertools.islice(items, 4 * want + 8))
    random.shuffle(window)
    return itertools.chain(window, items)


__all__ = ["Chunked", "ReadyQueue"]
