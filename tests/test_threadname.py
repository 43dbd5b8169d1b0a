"""conductor.threadname: a thread's name reaches the OS (what ``top -H`` shows), libc loaded lazily."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from conductor.threadname import name_this_thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names reach the OS on Linux only")
def test_a_thread_named_shows_its_name_in_proc_cut_to_15_bytes() -> None:
    seen: list[str] = []

    def named() -> None:
        name_this_thread("claimer-of-a-long-name")
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())

    thread = threading.Thread(target=named)
    thread.start()
    thread.join()
    assert seen == ["claimer-of-a-lo"]
