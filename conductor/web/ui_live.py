"""Live pages: server-sent event streams that push a page's fragment again when it changed.

``/ui/live/<page>?<the page's query>``: follows the shared event feed (``ctx.feed.subscribe``: the
etcd watches every page shares) for the records that concern the page; when some arrive it reads
the page's model again and sends the fragment as one ``fragment`` event. Records that arrive
together are coalesced, and one stream renders at most :data:`MIN_INTERVAL` apart, so a job
finishing thousands of tasks a second costs a page a few reads a second, never one per task.
The stream subscribes first and then sends a fragment at once: what changed between the page's
render and the stream's start is not lost. Streams of the same page share renders (see
:class:`Live`). Nothing is read while nothing changes (a comment every :data:`KEEPALIVE`
seconds keeps proxies from closing the stream).

``/ui/live/log/<task>``: a task's log, as ``log`` events (JSON strings), from
``Client.logs(follow=True)`` in a worker thread, until the task ended or the browser went away;
then one ``end`` event.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import ConductorError

MIN_INTERVAL = 0.5  # seconds between two renders of one page
KEEPALIVE = 15.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def sse(event: str, data: str) -> str:
    """One server-sent event; each line of ``data`` gets its own ``data:`` field (the browser
    joins them with newlines again)."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n"


class Live:
    """The live streams. Renders are shared: streams of one page (same user, page and query) that
    were told of a change reuse a render that started after the change reached this server, so
    twenty browsers on one job cost about what one does."""

    def __init__(self, ctx: Any, ui: Any):
        self.ctx = ctx
        self.ui = ui
        self.renders: dict[tuple[str, ...], tuple[float, str, bool]] = {}  # key: (started, event, ok)

    async def page(self, request: Request) -> Response:
        from .ui import PAGES  # ui imports this module

        name = request.path_params["page"]
        if name not in PAGES:
            return Response(f"no live page {name}\n", status_code=404, media_type="text/plain")
        client = self.ctx.client_for(request)
        query = dict(request.query_params)
        page = PAGES[name]
        key = (str(client.user), name, *sorted(f"{k}={v}" for k, v in query.items()))

        async def render(since: float) -> tuple[str, bool]:
            return await self._render(key, since, lambda: self._fragment(page, name, client, query))

        try:
            ids = await run_in_threadpool(page.live_ids, client, query) if page.live_ids else None
        except ConductorError as exc:
            return StreamingResponse(iter([sse("gone", str(exc))]), media_type="text/event-stream", headers=HEADERS)
        return StreamingResponse(self._stream(render, ids, page.kinds), media_type="text/event-stream",
                                 headers=HEADERS)

    def _fragment(self, page: Any, name: str, client: Any, query: dict[str, str]) -> tuple[str, bool]:
        """(one server-sent event, whether the page can go on); runs in the thread pool."""
        try:
            model = page.model(client, query)
        except ConductorError as exc:  # the job was removed, the user lost access...
            return sse("gone", str(exc)), False
        return sse("fragment", self.ui.fragment(name, model)), True

    async def _render(self, key: tuple[str, ...], since: float, fresh: Any) -> tuple[str, bool]:
        """A render of ``key`` that started at or after ``since`` (when the change that asks for
        it arrived): the last one if it did, else a new one."""
        cached = self.renders.get(key)
        if cached is not None and cached[0] >= since:
            return cached[1], cached[2]
        started = time.monotonic()
        text, ok = await run_in_threadpool(fresh)
        if cached is None or cached[0] < started:
            self.renders[key] = (started, text, ok)
        for old in [k for k, v in self.renders.items() if started - v[0] > KEEPALIVE]:
            del self.renders[old]  # pages nobody looks at any more
        return text, ok

    async def _stream(self, render: Any, ids: set[str] | None, kinds: frozenset[str] | None) -> AsyncIterator[str]:
        dirty = asyncio.Event()
        subscription = self.ctx.feed.subscribe(ids)  # before the first render: no change falls between
        since = [time.monotonic()]  # when the oldest change not yet sent arrived

        async def pump() -> None:
            try:
                async for record in subscription:
                    # "reload": the feed dropped records this page was too slow for; read it again
                    wanted = kinds is None or record.get("kind") in kinds or record.get("kind") == "reload"
                    if wanted and not dirty.is_set():
                        since[0] = time.monotonic()
                        dirty.set()
            finally:
                closing = getattr(subscription, "aclose", None)
                if closing is not None:
                    await closing()

        follower = asyncio.create_task(pump())
        dirty.set()
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    await asyncio.wait_for(dirty.wait(), KEEPALIVE)
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                dirty.clear()
                text, ok = await render(since[0])
                yield text
                if not ok:
                    return
                await asyncio.sleep(MIN_INTERVAL)
        finally:
            follower.cancel()

    async def log(self, request: Request) -> Response:
        client = self.ctx.client_for(request)
        task_id = request.path_params["id"]
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        stop = threading.Event()

        def put(event: str, data: str) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, (event, data))

        def follow() -> None:
            try:
                client.logs(task_id, follow=True, write=lambda b: put("log", json.dumps(b.decode("utf-8", "replace"))),
                            stop=stop)
                put("end", "the task has ended")
            except ConductorError as exc:
                put("gone", str(exc))

        async def stream() -> AsyncIterator[str]:
            worker = threading.Thread(target=follow, name="ui-log", daemon=True)
            worker.start()
            try:
                yield "retry: 5000\n\n"
                while True:
                    try:
                        event, data = await asyncio.wait_for(chunks.get(), KEEPALIVE)
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield sse(event, data)
                    if event in ("end", "gone"):
                        return
            finally:
                stop.set()  # the browser went away (or the task ended): the follower's watches close

        return StreamingResponse(stream(), media_type="text/event-stream", headers=HEADERS)
