"""What a job may be and store: every cap in one place (docs/jobs.md, "Limits", lists them).

Pure constants and a formatter, imported by the parsers (jobfile), the validator (spec) and the
size check (footprint): none of them imports another to learn a limit.
"""
from __future__ import annotations

KIB, MIB = 1024, 1024 * 1024
MAX_FILE_BYTES = 64 * MIB  # a job file read for check or post
MAX_JOB_BYTES = 32 * MIB  # a job's stored values (job, layers, tasks as post encodes them) in all
MAX_VALUE_BYTES = 512 * KIB  # one stored value (a task's, say): two fit in one request with room to spare
MAX_TASKS = 250_000  # tasks in one job
MAX_DEPTH = 64  # nesting of maps and lists in a job file (a job needs fewer than ten)
MAX_DIGITS = 64  # digits of one integer (Python refuses to convert more than 4,300)
MAX_ALIAS_NODES = 100_000  # YAML aliases may expand a file to this many nodes...
ALIAS_FACTOR = 10  # ...or to this many times the nodes written, whichever is more
MAX_ARG_BYTES = 128 * KIB  # one argv element or NAME=value with its NUL: Linux's MAX_ARG_STRLEN
MAX_EXEC_BYTES = 1 * MIB  # a task's argv and merged env (job, layer, task) as exec gets them
MAX_TIMEOUT = 30 * 86400.0  # seconds
MAX_MEMORY = 1024 ** 5  # bytes (1 PiB)
MAX_CPUS = 8192  # Linux's largest NR_CPUS: no node has more


def human_bytes(n: int) -> str:
    """A size for people: ``70.0 MiB (73400320 bytes)``."""
    if n >= MIB:
        return f"{n / MIB:.1f} MiB ({n} bytes)"
    return f"{n / KIB:.1f} KiB ({n} bytes)" if n >= KIB else f"{n} bytes"
