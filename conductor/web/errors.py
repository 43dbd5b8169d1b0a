"""The one place where Conductor's errors become HTTP answers.

Every error is JSON ``{"error": message, "field": where or null, "object": which id or null}``
with the status a REST client expects (the table below, most specific class first). A stale etag
also carries ``etag`` (the current one) in the body and an ``ETag`` header; 401 carries
``WWW-Authenticate`` so a browser asks for the user's etcd credentials.
"""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import (Ambiguous, AuthFailed, ConductorError, EtcdMissing, HistoryCompacted, InvalidSpec, LeaseLost,
                      NoSpace, NotFound, PermissionDenied, Refused, RequestRefused, StaleEtag, StoreError,
                      StoreUnavailable, TlsFailed, WaitTimeout)
from .context import Unauthorized


class BadRequest(ConductorError):
    """A request the API cannot read: a body that is not JSON or YAML, a query value that is not a
    number. ``field`` names the part."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


# most specific first: the first class the error is an instance of decides
STATUS: list[tuple[type[BaseException], int]] = [
    (BadRequest, 400),
    (Ambiguous, 400),
    (InvalidSpec, 422),
    (Unauthorized, 401),
    (AuthFailed, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (HistoryCompacted, 410),
    (Refused, 409),
    (StaleEtag, 412),
    (RequestRefused, 413),
    (NoSpace, 507),
    (StoreUnavailable, 503),
    (EtcdMissing, 503),
    (TlsFailed, 502),
    (LeaseLost, 500),
    (StoreError, 502),
    (WaitTimeout, 504),
    (ConductorError, 500),
]

REALM = 'Basic realm="conductor: your etcd user", charset="UTF-8"'


def status_of(exc: BaseException) -> int:
    if isinstance(exc, InvalidSpec) and exc.field == "id":
        return 404  # an id (or job name) that names nothing, as the path gave it: not a validation error
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def body_of(exc: BaseException, object_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": getattr(exc, "reason", None) or str(exc),
                            "field": getattr(exc, "field", None), "object": object_id}
    if isinstance(exc, StaleEtag):
        body.update(object=exc.object_id, etag=exc.current, given=exc.given)
    if isinstance(exc, InvalidSpec) and exc.field:
        body["error"] = exc.reason
    return body


def error_response(exc: BaseException, object_id: str | None = None) -> JSONResponse:
    status = status_of(exc)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = REALM
    if isinstance(exc, StaleEtag):
        headers["ETag"] = f'"{exc.current}"'
    return JSONResponse(body_of(exc, object_id), status_code=status, headers=headers)


async def handle(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's exception handler for ConductorError: the object is the path's id, if any."""
    return error_response(exc, request.path_params.get("id") or request.path_params.get("name"))
