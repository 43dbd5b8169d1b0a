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
    from .deadlines import Deadlines
    from .executor import Limits, Run
    from .gate import Gate
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
    gate: "Gate"
    limits: "Limits"
    clock: "Clock"
    supervision: "Supervision"
    deadlines: "Deadlines"
    stopping: threading.Event
    stopped: threading.Event
    containers: str | None
    docker_host: str

    @property
    def finisher(self) -> Finishing: ...

    @property
    def claimer(self) -> Claiming: ...

    def available_memory(self) -> int: ...

    def stop_requested(self, user: str, task_id: str, request: dict[str, Any]) -> None: ...
