"""One rooted tree of errors.

Expected races (a lost claim, a stale compare) are not errors: the functions that meet them return
``None`` or ``False``. Everything here means something failed or was refused.
"""
from __future__ import annotations

from .exitcodes import Exit


class ConductorError(Exception):
    """Root of every error Conductor raises on purpose."""

    exit_code = Exit.FAILED


class StoreError(ConductorError):
    """etcd answered with something we could not use."""


class StoreUnavailable(StoreError):
    """etcd could not be reached (or did not answer in time)."""

    exit_code = Exit.UNAVAILABLE


class LeaseLost(StoreError):
    """A write named a lease that has expired or was revoked: its claims are gone."""


class NoSpace(StoreUnavailable):
    """etcd raised its NOSPACE alarm: it refuses every write until space is freed and the alarm is
    disarmed. A kind of outage (writes wait and retry, reads still work), with its own status."""

    exit_code = Exit.NO_SPACE


class PermissionDenied(StoreError):
    """etcd's authentication is on and this user may not read or write that key."""

    exit_code = Exit.PERMISSION_DENIED


class AuthFailed(StoreError):
    """etcd did not accept the credentials (or wants some and got none)."""

    exit_code = Exit.AUTH_FAILED


class TlsFailed(StoreError):
    """The TLS handshake with etcd failed: its certificate is not signed by the CA we trust (or not
    for that address), it refused our client certificate, or it does not speak TLS at all."""

    exit_code = Exit.TLS_FAILED


class RequestRefused(StoreError):
    """etcd refused a request as malformed: too large, too many operations, a key twice in one
    transaction. Retrying the same request cannot help."""

    exit_code = Exit.REQUEST_REFUSED


class InvalidSpec(ConductorError):
    """Bad input: a job file, a template, a parameter or a command.

    ``field`` names where the problem is (``layers[1].tasks[0].cmd``) and ``reason`` says what is
    wrong with it. Nothing has been written when this is raised.
    """

    exit_code = Exit.BAD_INPUT

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class NotFound(ConductorError):
    """No object with that id (or prefix) exists."""

    exit_code = Exit.NOT_FOUND


class Ambiguous(ConductorError):
    """An id prefix matches more than one object."""

    exit_code = Exit.BAD_INPUT


class StaleEtag(ConductorError):
    """A change named an etag that is no longer the object's current one."""

    exit_code = Exit.STALE_ETAG

    def __init__(self, object_id: str, given: int, current: int):
        self.object_id = object_id
        self.given = given
        self.current = current
        super().__init__(f"{object_id}: etag {given} is stale, the current etag is {current}")


class Refused(ConductorError):
    """A change that the object's state does not allow (adding tasks to a running layer...)."""

    exit_code = Exit.REFUSED


class WaitTimeout(ConductorError):
    """A wait for a job ran out of time before the job ended."""

    exit_code = Exit.WAIT_TIMEOUT


class EtcdMissing(ConductorError):
    """No etcd endpoint was given, none answers locally, and no etcd binary is installed."""

    exit_code = Exit.NO_ETCD


class HistoryCompacted(ConductorError):
    """A watch from a revision etcd has compacted away: the history asked for is gone."""

    exit_code = Exit.NOT_FOUND

    def __init__(self, since: int, oldest: int):
        self.since = since
        self.oldest = oldest
        super().__init__(f"revision {since} is compacted: etcd keeps history from revision {oldest} on; "
                         f"start again with --since {oldest} (transitions before it are lost) or without --since")
