"""Server-sent events: an async iterator of dicts as a ``text/event-stream`` response.

Each item is one event: ``data:`` its JSON, ``event:`` its ``kind`` when ``named`` (so a browser's
``EventSource`` can listen per kind: ``reload`` tells a page to read its view again), ``id:`` its
``rev`` when it has one (a reconnecting ``EventSource`` sends it back as ``Last-Event-ID``). A
comment line every ``keepalive`` seconds keeps proxies from closing a quiet stream. An iterator
with ``drain_nowait()`` (a feed subscription) has what it holds sent in one write per wake-up. Starlette
cancels the stream when the browser goes away, which closes the iterator.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from starlette.responses import StreamingResponse

KEEPALIVE = 15.0


def encode(item: dict[str, Any], named: bool = True) -> bytes:
    """One event; an item with an ``encoded`` cache (a shared feed record) is encoded once."""
    cache = getattr(item, "encoded", None)
    if cache is not None and named in cache:
        return cache[named]
    lines = []
    if named and item.get("kind"):
        lines.append(f"event: {item['kind']}")
    if item.get("rev") is not None:
        lines.append(f"id: {item['rev']}")
    lines.append("data: " + json.dumps(item, sort_keys=True, default=str))
    out = ("\n".join(lines) + "\n\n").encode()
    if cache is not None:
        cache[named] = out
    return out


async def _frames(items: AsyncIterator[dict[str, Any]], named: bool, keepalive: float) -> AsyncIterator[bytes]:
    yield b": stream open\n\n"  # the headers and a first byte now: the client knows it is connected
    iterator = items.__aiter__()
    pending: asyncio.Task[dict[str, Any]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if not done:
                yield b": keepalive\n\n"
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            # what else is queued goes in the same write: one send per wake-up, not per record
            drain = getattr(iterator, "drain_nowait", None)
            more = drain() if drain is not None else []
            yield b"".join(encode(i, named) for i in [item, *more])
    finally:
        if pending is not None:
            pending.cancel()
        closer = getattr(iterator, "aclose", None)
        if closer is not None:
            await closer()


def event_stream(items: AsyncIterator[dict[str, Any]], named: bool = True,
                 keepalive: float = KEEPALIVE) -> StreamingResponse:
    """A ``text/event-stream`` response of ``items``."""
    return StreamingResponse(_frames(items, named, keepalive), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
