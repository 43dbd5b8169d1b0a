"""Exit statuses of every ``conductor`` command and of a node, in one place (docs/cli.md lists them)."""
from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # a job ended ERRORED (post --wait), or a node stopped by a second signal
    BAD_INPUT = 2
    UNAVAILABLE = 3  # etcd could not be reached
    NOT_FOUND = 4
    STALE_ETAG = 5
    REFUSED = 6
    NO_ETCD = 7  # no etcd endpoint, none local, no etcd binary
    WAIT_TIMEOUT = 8
    NO_SPACE = 9  # etcd raised its NOSPACE alarm
    PERMISSION_DENIED = 10
    AUTH_FAILED = 11
    REQUEST_REFUSED = 12  # etcd refused a request as malformed
    TLS_FAILED = 13  # the TLS handshake with etcd failed
    INTERNAL = 70  # a node thread died of a bug (EX_SOFTWARE); the node stopped, its tasks were killed
    SUPERVISOR_LOST = 71  # the node's supervisor process died; the node killed its tasks and stopped
