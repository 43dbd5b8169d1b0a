"""What the parts of a node (claimer, finisher, keeper) may use of it: one narrow interface, so they
depend on this, not on the node module that wires them together (no import goes back up)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .board import Board
    from .cache import Cache
    from .claims import Claims
    from .clock import Clock
    from .executor import Limits, Run
    from .lifecycle import Outcome
    from .keys import Keys
    from .runtable import RunTable
    from .session import Session
    from .settings import NodeSettings
    from .store import Store
    from .supervision import Supervision


class Finishing(Protocol):
    def run_done(self, run: "Run", outcome: "Outcome") -> None: ...

    def settle(self, job: str, user: str) -> None: ...


class Claiming(Protocol):
    def forget_dir(self, job: str) -> None: ...


class Gating(Protocol):
    """What the claimer and claims use of :class:`conductor.gate.Gate` (flow control)."""

    def begin(self) -> None: ...

    def admit(self, task: dict[str, Any]) -> bool: ...

    def mark(self, task: dict[str, Any]) -> None: ...

    def txn_parts(self, tasks: list[dict[str, Any]], lease: int, at: float) -> tuple[list[Any], list[Any]]: ...

    def committed(self, revision: int) -> None: ...


class Sweeping(Protocol):
    """What the keeper uses of :class:`conductor.deadlines.Deadlines`."""

    def sweep(self) -> None: ...


class Node(Protocol):
    name: str
    settings: "NodeSettings"
    store: "Store"
    keys: "Keys"
    board: "Board"
    cache: "Cache"
    table: "RunTable"
    session: "Session"
    claims: "Claims"
    limits: "Limits"
    clock: "Clock"
    supervision: "Supervision"
    stopping: threading.Event
    stopped: threading.Event
    containers: str | None
    docker_host: str

    @property
    def finisher(self) -> Finishing: ...

    @property
    def claimer(self) -> Claiming: ...

    @property
    def gate(self) -> Gating: ...

    @property
    def deadlines(self) -> Sweeping: ...

    def available_memory(self) -> int: ...

    def stop_requested(self, user: str, task_id: str, request: dict[str, Any]) -> None: ...
