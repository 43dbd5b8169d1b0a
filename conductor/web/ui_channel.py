"""One live page shared by every browser that shows it: one watch, one render loop.

A :class:`Channel` is keyed by what a page shows (user, page, query). It follows a subscription
(an async iterator: :class:`.feed.KeyWatch`) that yields whenever something the page shows
changed; then it renders the page's fragment (at most once per ``interval``, coalescing what
arrived meanwhile) and hands the result to every :class:`Listener`. A browser joining an open
channel asks for a render, which everyone gets: a render always starts after the change that
asked for it reached this server, so no listener is left with a stale page. Twenty browsers on
one job cost what one does. The channel stops (and closes its watch) when its last listener
leaves, or after a render says the page is gone.

Pure asyncio over the subscription and a ``render`` callable, so it has unit tests of its own
without a server.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable

Render = Callable[[], Awaitable[tuple[str, bool]]]  # (one server-sent event, can the page go on)


class Listener:
    """One browser's view of a channel: the newest render only (a slow browser skips the older
    ones, never queues them)."""

    def __init__(self) -> None:
        self.latest: tuple[str, bool] | None = None
        self.ready = asyncio.Event()

    def offer(self, rendered: tuple[str, bool]) -> None:
        self.latest = rendered
        self.ready.set()

    def take(self) -> tuple[str, bool]:
        self.ready.clear()
        assert self.latest is not None
        return self.latest


class Channel:
    def __init__(self, subscription: Any, render: Render, interval: float, on_empty: Callable[["Channel"], None]):
        self.subscription = subscription
        self.render = render
        self.interval = interval
        self.on_empty = on_empty
        self.listeners: set[Listener] = set()
        self.closed = False
        self.dirty = asyncio.Event()
        self.tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._renders())]

    def join(self) -> Listener:
        """A new listener; the next render (asked for now) is its first fragment."""
        listener = Listener()
        self.listeners.add(listener)
        self.dirty.set()
        return listener

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        if not self.listeners:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        self.on_empty(self)

    async def _pump(self) -> None:
        try:
            async for _ in self.subscription:  # something the page shows changed
                self.dirty.set()
        finally:
            closing = getattr(self.subscription, "aclose", None)
            if closing is not None:
                await closing()

    async def _renders(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()  # before the render: a change during it asks for the next one
            rendered = await self.render()
            for listener in list(self.listeners):
                listener.offer(rendered)
            if not rendered[1]:
                self.close()
                return
            await asyncio.sleep(self.interval)


async def listen(channel: Channel, listener: Listener, keepalive: float) -> AsyncIterator[str]:
    """A listener's server-sent events: each render it is offered, a comment when quiet for
    ``keepalive`` seconds; ends after a render that says the page is gone, and leaves the channel
    when the browser goes away."""
    try:
        yield "retry: 2000\n\n"
        while True:
            try:
                await asyncio.wait_for(listener.ready.wait(), keepalive)
            except asyncio.TimeoutError:
                yield ": keepalive\n\n"
                continue
            text, ok = listener.take()
            yield text
            if not ok:
                return
    finally:
        channel.leave(listener)
