"""One owner for a node's threads: starts them, names them, joins them, and turns a thread that
dies of a bug into a loud stop of the node instead of a silent hole in it."""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from .threadname import name_this_thread

log = logging.getLogger("conductor.node")


class Crew:
    def __init__(self, on_crash: Callable[[str, BaseException], None]):
        self.on_crash = on_crash
        self.threads: list[threading.Thread] = []

    def start(self, name: str, target: Callable[..., Any], *args: Any) -> threading.Thread:
        def body() -> None:
            name_this_thread()
            try:
                target(*args)
            except BaseException as exc:  # noqa: BLE001 - reported, then the node stops
                log.critical("thread %s failed; stopping the node", name, exc_info=exc)
                self.on_crash(name, exc)

        thread = threading.Thread(target=body, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def join(self, timeout: float = 10.0, names: tuple[str, ...] = ()) -> None:
        for thread in self.threads:
            if thread is not threading.current_thread() and (not names or thread.name in names):
                thread.join(timeout)
