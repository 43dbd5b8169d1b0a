"""A task's output with its secrets masked before it reaches the node's disk.

A task that uses secret inputs writes into a pipe instead of its log file; a thread of the
supervisor copies the pipe to the file, replacing each secret by ``****`` on the way. So the full
log on the node, the tail pushed to etcd while it runs and the final tail never hold a secret the
task printed. A secret split across two reads is still found: the last ``longest - 1`` bytes of a
read are held back until the next one (or the end). Tasks without secrets write to their file
directly, as before: no thread, no copy.
"""
from __future__ import annotations

import os
import threading

MASK = b"****"
CHUNK = 65536


def masked(data: bytes, words: list[bytes]) -> bytes:
    for word in words:
        data = data.replace(word, MASK)
    return data


class Masker:
    """Copies from a pipe into ``log_path`` with ``secrets`` masked; ``write_fd`` is the end the
    task gets as stdout and stderr (the caller closes it once the task has been started)."""

    def __init__(self, secrets: list[str], log_path: str):
        self.words = sorted({s.encode() for s in secrets if s}, key=len, reverse=True)
        self.read_fd, self.write_fd = os.pipe()
        self.out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.thread = threading.Thread(target=self._copy, name="masker", daemon=True)
        self.thread.start()

    def _copy(self) -> None:
        keep = max((len(w) for w in self.words), default=1) - 1
        pending = b""
        try:
            while True:
                chunk = os.read(self.read_fd, CHUNK)
                if not chunk:
                    break
                pending = masked(pending + chunk, self.words)
                cut = max(0, len(pending) - keep)
                os.write(self.out, pending[:cut])
                pending = pending[cut:]
            os.write(self.out, masked(pending, self.words))
        finally:
            os.close(self.read_fd)
            os.close(self.out)

    def started(self) -> None:
        """The task has its own copy of the write end: ours must go, or the copy never ends."""
        os.close(self.write_fd)

    def finish(self, timeout: float = 2.0) -> None:
        """Wait (a bounded time: a stray descendant may hold the pipe) for the copy to end."""
        self.thread.join(timeout)
