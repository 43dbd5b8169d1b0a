"""Live pages: server-sent event streams that push a page's fragment again when it changed.

``/ui/live/<page>?<the page's query>``: watches the keys the page shows (:class:`.feed.KeyWatch`:
narrow etcd watches with the page's user's client, nothing decoded); when etcd reports writes
there it reads the page's model again and sends the fragment as one ``fragment`` event. Writes
that arrive together are coalesced, and a page is rendered at most every :data:`MIN_INTERVAL`
seconds whatever number of browsers show it (one :class:`~.ui_channel.Channel` per page), so a job
finishing thousands of tasks a second costs one read a second, never one per task or per browser.
A stream starts with a fresh fragment: what changed between the page's render and the stream's
start is not lost. Nothing is read while nothing changes (a comment every :data:`KEEPALIVE`
seconds keeps proxies from closing the stream).

``/ui/live/log/<task>``: a task's log, as ``log`` events (JSON strings), from
``Client.logs(follow=True)`` in a worker thread, until the task ended or the browser went away;
then one ``end`` event.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any, AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import ConductorError
from .context import WebContext
from .feed import KeyWatch, Watched
from .ui_channel import Channel, listen

MIN_INTERVAL = 1.0  # seconds between two renders of one page
KEEPALIVE = 15.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def sse(event: str, data: str) -> str:
    """One server-sent event; each line of ``data`` gets its own ``data:`` field (the browser
    joins them with newlines again)."""
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n"


class Live:
    """The live streams; :attr:`channels` holds one :class:`~.ui_channel.Channel` per page that
    some browser shows, keyed by (user, page, query)."""

    def __init__(self, ctx: WebContext, ui: Any, pages: dict[str, Any]):
        self.ctx = ctx
        self.ui = ui  # renders a page's fragment (ui.UI)
        self.pages = pages  # ui.PAGES, passed in: ui imports this module
        self.channels: dict[tuple[str, ...], Channel] = {}

    async def page(self, request: Request) -> Response:
        name = request.path_params["page"]
        if name not in self.pages:
            return Response(f"no live page {name}\n", status_code=404, media_type="text/plain")
        client = self.ctx.client_for(request)
        query = dict(request.query_params)
        key = (str(client.user), name, *sorted(f"{k}={v}" for k, v in query.items()))
        channel = self.channels.get(key)
        if channel is None:
            page = self.pages[name]
            try:
                watched, revision = await run_in_threadpool(self._watched, page, client, query)
            except ConductorError as exc:
                return StreamingResponse(iter([sse("gone", str(exc))]), media_type="text/event-stream",
                                         headers=HEADERS)
            channel = self.channels.get(key)  # another browser may have opened it meanwhile
            if channel is None:
                channel = self._open(key, KeyWatch(client.store, watched, revision, MIN_INTERVAL), page, name, client,
                                     query)
        return StreamingResponse(listen(channel, channel.join(), KEEPALIVE), media_type="text/event-stream",
                                 headers=HEADERS)

    @staticmethod
    def _watched(page: Any, client: Any, query: dict[str, str]) -> tuple[list[Watched], int]:
        """What the page watches, and from which revision: the one after now, so the first
        render (which comes later) and the watch leave no change between them."""
        return page.watched(client, query), client.store.revision() + 1

    def _open(self, key: tuple[str, ...], watch: KeyWatch, page: Any, name: str, client: Any,
              query: dict[str, str]) -> Channel:
        async def render() -> tuple[str, bool]:
            return await run_in_threadpool(self._fragment, page, name, client, query)

        holding = contextlib.ExitStack()
        holding.enter_context(self.ctx.hold(client))  # its renders use the client as long as it lasts

        def forget(channel: Channel) -> None:
            if self.channels.get(key) is channel:
                del self.channels[key]
            holding.close()

        channel = Channel(watch, render, MIN_INTERVAL, forget)
        self.channels[key] = channel
        return channel

    def _fragment(self, page: Any, name: str, client: Any, query: dict[str, str]) -> tuple[str, bool]:
        """(one server-sent event, whether the page can go on); runs in the thread pool."""
        try:
            model = page.model(client, query)
        except ConductorError as exc:  # the job was removed, the user lost access...
            return sse("gone", str(exc)), False
        return sse("fragment", self.ui.fragment(name, model)), True

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
                with self.ctx.hold(client):
                    client.logs(task_id, follow=True, stop=stop,
                                write=lambda b: put("log", json.dumps(b.decode("utf-8", "replace"))))
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
