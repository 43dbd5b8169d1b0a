"""Logs and events over HTTP: a task's log (plain, or followed live) and transition records as SSE.

A follow runs the client's blocking call in a thread of its own (:func:`threaded`), never in the
shared thread pool, and hands items to the response through a bounded queue: a slow reader slows
its own follow, nothing else. When the reader goes away the follow is told to stop.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..client import Client
from ..errors import ConductorError, NotFound
from .errors import body_of, status_of
from .params import call, context, q_bool, q_int
from .sse import event_stream

_END = object()
BUFFER = 256  # items a follow may run ahead of its reader


async def threaded(work: Callable[[Callable[[Any], None], threading.Event], None]) -> AsyncIterator[Any]:
    """Run ``work(emit, stop)`` in a thread; yield what it emits until it returns. An error it
    raises is yielded as ``{"kind": "error", ...}`` (the status line is long gone by then)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue(BUFFER)
    stop = threading.Event()

    def emit(item: Any) -> None:
        if not stop.is_set():
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    def run() -> None:
        try:
            work(emit, stop)
        except ConductorError as exc:
            emit({"kind": "error", "status": status_of(exc), **body_of(exc)})
        except RuntimeError:  # the loop closed under us: the server is stopping
            return
        finally:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, _END)
            except RuntimeError:
                pass

    threading.Thread(target=run, name="web-follow", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        while not queue.empty():  # unblock a thread waiting to put
            queue.get_nowait()


def _wants_sse(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


async def logs(request: Request) -> Response:
    """A task's log tail. With ``follow=1`` it goes on, live, until the task ends: as server-sent
    events (``log`` events, ``{"data": text}``, then ``end``) when the request accepts
    ``text/event-stream``, else as chunked plain text.
    ---
    summary: Get (or follow) a task's log
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
      - {name: follow, in: query, schema: {type: boolean}}
    responses:
      200: {description: "text/plain, or text/event-stream with follow and Accept: text/event-stream"}
      404: {description: no such task}
    """
    task_id = request.path_params["id"]
    if not q_bool(request, "follow"):
        chunks: list[bytes] = []
        await call(request, lambda c: c.logs(task_id, write=chunks.append))
        return Response(b"".join(chunks), media_type="text/plain; charset=utf-8")
    def task_client(c: Client) -> Client:  # a 404 now, as a status, not as an event in a 200 stream
        if c.locate(task_id)[0].kind != "task":
            raise NotFound(f"{task_id} is not a task id")
        return c

    client = await call(request, task_client)
    sse = _wants_sse(request)

    def work(emit: Callable[[Any], None], stop: threading.Event) -> None:
        with context(request).hold(client):
            client.logs(task_id, follow=True, write=lambda data: emit(data), stop=stop)

    async def items() -> AsyncIterator[Any]:
        async for data in threaded(work):
            if isinstance(data, dict):  # an error
                yield data if sse else f"\n[error: {data['error']}]\n".encode()
                return
            yield {"kind": "log", "data": data.decode(errors="replace")} if sse else data
        if sse:
            yield {"kind": "end"}

    if sse:
        return event_stream(items())
    return StreamingResponse(items(), media_type="text/plain; charset=utf-8")


async def events(request: Request) -> Response:
    """Transition records (as ``conductor events --json`` prints them) as server-sent events, one
    event per record, named by its kind (job, layer, task, node, fire); the event id is the
    record's etcd revision. Live from the server's shared feed; with ``since`` (a revision, or the
    ``Last-Event-ID`` header + 1) replayed from there first, without gaps.
    ---
    summary: Follow transitions
    parameters:
      - {name: since, in: query, schema: {type: integer}, description: replay from this etcd revision}
      - {name: id, in: query, schema: {type: string}, description: "only these jobs, layers or tasks; repeat"}
      - {name: all_users, in: query, schema: {type: boolean}}
    responses:
      200: {description: text/event-stream}
      410: {description: since is older than etcd's history}
    """
    since = q_int(request, "since", None, minimum=1)
    last = request.headers.get("last-event-id", "")
    if since is None and last.isdigit():
        since = int(last) + 1
    ids = request.query_params.getlist("id")
    all_users = q_bool(request, "all_users")
    if since is not None:  # ids of removed jobs are fine here: the client's replay takes full ids of them
        client: Client = await call(request, lambda c: c)
        return event_stream(_replay(request, client, since, ids, all_users))
    client, full = await call(request, lambda c: (c, {c.locate(i)[1] for i in ids}))  # bad ids: 404/400 now
    # the subscription itself, not a generator over it: the SSE writer drains it a batch at a time,
    # and closes it (unsubscribing) when the reader goes away
    return event_stream(context(request).feed.subscribe(full or None, None if all_users else client.user))


async def _replay(request: Request, client: Client, since: int, ids: list[str],
                  all_users: bool) -> AsyncIterator[dict[str, Any]]:
    def work(emit: Callable[[Any], None], stop: threading.Event) -> None:
        def deliver(records: list[dict[str, Any]]) -> None:
            for record in records:
                emit(record)

        with context(request).hold(client):
            client.events(deliver, since=since, ids=ids, all_users=all_users, stop=stop)

    async for record in threaded(work):
        yield record


def routes() -> list[BaseRoute]:
    return [Route("/tasks/{id}/logs", logs, methods=["GET"]),
            Route("/events", events, methods=["GET"])]
