"""Give the calling thread its name at the OS level too, so ``top -H``, ``ps -L`` and
``/proc/<pid>/task/*/comm`` show which of a conductor's threads uses the CPU (Python 3.11 names
threads only for itself). Linux only; elsewhere, and on any failure, it does nothing."""
from __future__ import annotations

import functools
import sys
import threading
from typing import Any

_PR_SET_NAME = 15


@functools.cache
def _libc() -> Any:
    """libc, loaded on the first naming: ctypes and the library search cost every importer (the
    CLI imports this module through lifecycle) a few ms, and only threads of a node are named."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def name_this_thread(name: str | None = None) -> None:
    """Name the OS thread after ``name`` or the Python thread's name (cut to 15 bytes)."""
    libc = _libc()
    if libc is None:
        return
    import ctypes

    raw = (name or threading.current_thread().name).encode(errors="replace")[:15]
    try:
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)
    except (OSError, AttributeError):
        pass
