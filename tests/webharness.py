"""A web server for the UI's tests: the UI's routes on a minimal context, served by uvicorn on a
free loopback port in a thread of the test process.

The context is what the server (``conductor/web/app.py``) gives the UI: ``client_for(request)``
(here the test's Client for every request), ``feed`` (transition records from ``Client.events``,
one follower shared by every page), ``templates_dir`` and ``static_dir``. When the server's
``make_app`` is merged, :func:`ui_app` can build the whole app with it instead (the UI's tests pass
so, checked against the api branch)::

    os.environ["CONDUCTOR_USER"] = client.user  # the server's own client acts as the test's user
    app = make_app(WebSettings(etcd=[f"{h}:{p}" for h, p in client.store.endpoints],
                               namespace=client.keys.namespace, auth=False))
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request

from conductor.client import Client
from conductor.errors import ConductorError
from conductor.web import ui
from harness import free_port, wait_for

WEB_DIR = Path(ui.__file__).parent


class Subscription:
    """One subscriber's records, registered when made (as the server's feed does), read as an
    async iterator on the server's loop; ``aclose`` ends it."""

    def __init__(self, feed: "Feed", ids: set[str] | None):
        self.feed = feed
        self.ids = ids
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def wants(self, record: dict[str, Any]) -> bool:
        return self.ids is None or any(record["id"] == i or record["id"].startswith(i + ".") for i in self.ids)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.queue.get()

    async def aclose(self) -> None:
        with self.feed.lock:
            self.feed.subscribers.discard(self)


class Feed:
    """Transition records for many subscribers from one ``Client.events`` follower (all users')."""

    def __init__(self, client: Client):
        self.client = client
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.subscribers: set[Subscription] = set()
        self.thread = threading.Thread(target=self._run, name="ui-feed", daemon=True)

    def start(self) -> "Feed":
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.client.events(self._deliver, all_users=True, stop=self.stop)
        except ConductorError:  # etcd refused the test's client (the auth tests): pages do not follow
            pass

    def _deliver(self, records: list[dict[str, Any]]) -> None:
        with self.lock:
            subscribers = list(self.subscribers)
        for sub in subscribers:
            for record in records:
                if sub.wants(record):
                    sub.loop.call_soon_threadsafe(sub.queue.put_nowait, record)

    def subscribe(self, ids: set[str] | None = None) -> Subscription:
        """Call on the server's loop."""
        sub = Subscription(self, set(ids) if ids is not None else None)
        with self.lock:
            self.subscribers.add(sub)
        return sub


@dataclass
class Context:
    client: Client
    feed: Feed
    templates_dir: Path = WEB_DIR / "templates"
    static_dir: Path = WEB_DIR / "static"
    extra: dict[str, Any] = field(default_factory=dict)

    def client_for(self, request: Request) -> Client:
        return self.client


def ui_app(client: Client) -> tuple[Starlette, Feed]:
    feed = Feed(client).start()
    return Starlette(routes=ui.routes(Context(client, feed))), feed


class WebServer:
    """``with WebServer(client) as web: web.url + "/ui/"``: serving until the block ends."""

    def __init__(self, client: Client):
        self.app, self.feed = ui_app(client)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="ui-server", daemon=True)

    def __enter__(self) -> "WebServer":
        self.thread.start()
        wait_for(lambda: self.server.started, 20, what="the web server started")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.feed.stop.set()
        self.thread.join(10)
