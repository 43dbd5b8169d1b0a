"""Reading requests and calling the client for them: what every API route shares.

Client calls block (gRPC), so each runs in Starlette's thread pool (:func:`call`); long follows
(logs, events) run in threads of their own (:mod:`conductor.web.streams`) so they never hold the
pool.
"""
from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..client import Client
from ..control import Result
from ..errors import AuthFailed
from .context import WebContext
from .errors import BadRequest

T = TypeVar("T")
TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")
MAX_BODY = 8 * 1024 * 1024  # a job file larger than this is refused before parsing (etcd holds far less)


def context(request: Request) -> WebContext:
    return request.app.state.ctx


async def call(request: Request, fn: Callable[[Client], T]) -> T:
    """``fn(client)`` in the thread pool, with the client acting as the request's user. A client
    whose credentials etcd refused is forgotten (the error goes on: 401)."""
    ctx = context(request)
    holder: list[Client] = []

    def work() -> T:
        client = ctx.client_for(request)
        holder.append(client)
        with ctx.hold(client):
            return fn(client)

    try:
        return await run_in_threadpool(work)
    except AuthFailed:
        if holder:
            ctx.refused(holder[0])
        raise


def q_int(request: Request, name: str, default: int | None, minimum: int = 0) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(name, f"{text!r} is not a whole number") from None
    if value < minimum:
        raise BadRequest(name, f"{value} is below {minimum}")
    return value


def q_bool(request: Request, name: str) -> bool:
    text = request.query_params.get(name)
    if text is None:
        return False
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise BadRequest(name, f"{text!r} is not a yes/no value (1, 0, true, false)")


def q_params(request: Request) -> dict[str, str]:
    """``?param=key=value`` (repeated), as the CLI's ``-p``."""
    out: dict[str, str] = {}
    for item in request.query_params.getlist("param"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest("param", f"{item!r} is not key=value")
        out[key] = value
    return out


def if_match(request: Request) -> int | None:
    """The etag of ``If-Match`` (``"123"``, ``W/"123"`` or ``123``; ``*``: any), or None."""
    text = request.headers.get("if-match", "").strip()
    if text in ("", "*"):
        return None
    bare = text.removeprefix("W/").strip('"')
    if not bare.isdigit():
        raise BadRequest("If-Match", f"{text!r} is not an etag (the number show gives)")
    return int(bare)


async def body(request: Request, required: bool = True) -> Any:
    """The request's body as data: JSON, or YAML (a job file as written). Raises BadRequest when it
    is missing (and ``required``), too large or neither."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise BadRequest("body", f"{len(raw)} bytes is more than the {MAX_BODY} bytes a request may carry")
    if not raw.strip():
        if required:
            raise BadRequest("body", "empty: send the data as JSON or YAML")
        return None
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind.endswith("json"):
            return json.loads(raw)
        return yaml.safe_load(raw)  # YAML is a superset of JSON: any other type is read as YAML
    except (ValueError, yaml.YAMLError) as exc:
        raise BadRequest("body", f"not {'JSON' if kind.endswith('json') else 'JSON or YAML'}: "
                                 f"{str(exc).splitlines()[0]}") from None


def str_map(value: Any, field: str, nulls: bool = False) -> dict[str, Any]:
    """A map of text to text (``nulls``: or null), else BadRequest naming ``field``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(field, "must be a map of names to values")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if v is None and nulls:
            out[str(k)] = None
        elif isinstance(v, (str, int, float, bool)):
            out[str(k)] = str(v) if not isinstance(v, bool) else str(v).lower()
        else:
            raise BadRequest(f"{field}.{k}", "must be text")
    return out


def etag_header(etag: Any) -> dict[str, str]:
    return {"ETag": f'"{etag}"'} if isinstance(etag, int) else {}


def result(done: Result | list[Result]) -> JSONResponse:
    """What a change did (one object): its id, what was done and its new etag (also ``ETag``)."""
    one = done[0] if isinstance(done, list) else done
    return JSONResponse({"id": one.id, "done": one.done, "etag": one.etag}, headers=etag_header(one.etag))
