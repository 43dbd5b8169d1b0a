"""Give the calling thread its name at the OS level too, so ``top -H``, ``ps -L`` and
``/proc/<pid>/task/*/comm`` show which of a conductor's threads uses the CPU (Python 3.11 names
threads only for itself). Linux only; elsewhere, and on any failure, it does nothing."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        _libc = None


def name_this_thread(name: str | None = None) -> None:
    """Name the OS thread after ``name`` or the Python thread's name (cut to 15 bytes)."""
    if _libc is None:
        return
    raw = (name or threading.current_thread().name).encode(errors="replace")[:15]
    try:
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)
    except (OSError, AttributeError):
        pass
