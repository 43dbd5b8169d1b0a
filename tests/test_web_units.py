"""The pure rules of the web side, without etcd: addresses, Basic credentials, the error mapping,
a feed subscription's filter and overflow, and the SSE encoding."""
from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from conductor.errors import (AuthFailed, InvalidSpec, NoSpace, NotFound, PermissionDenied, Refused, StaleEtag,
                              StoreUnavailable)
from conductor.web.child import parse_address
from conductor.web.context import Unauthorized, basic_credentials
from conductor.web.feed import FeedRecord, Subscription
from conductor.web.errors import BadRequest, body_of, error_response, status_of
from conductor.web.sse import encode


def test_addresses() -> None:
    assert parse_address("127.0.0.1:8420") == ("127.0.0.1", 8420)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    assert parse_address(":80") == ("0.0.0.0", 80)
    assert parse_address("off") is None and parse_address("") is None
    for bad in ("localhost", "host:port", "1.2.3.4:70000"):
        with pytest.raises(InvalidSpec) as err:
            parse_address(bad)
        assert err.value.field == "--http"


def test_basic_credentials() -> None:
    def header(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert basic_credentials(header("alice:pw:with:colons")) == ("alice", "pw:with:colons")
    assert basic_credentials(header("alice")) is None
    assert basic_credentials(header(":pw")) is None
    assert basic_credentials("Bearer abc") is None
    assert basic_credentials("Basic !!!") is None


def test_errors_map_to_rest_statuses() -> None:
    cases: list[tuple[Exception, int]] = [
        (BadRequest("limit", "not a number"), 400), (InvalidSpec("layers", "required"), 422),
        (InvalidSpec("id", "names nothing"), 404), (NotFound("no job x"), 404), (Refused("started"), 409),
        (StaleEtag("j", 3, 5), 412), (Unauthorized("log in"), 401), (AuthFailed("wrong password"), 401),
        (PermissionDenied("denied"), 403), (StoreUnavailable("away"), 503), (NoSpace("full"), 507)]
    for exc, status in cases:
        assert status_of(exc) == status, exc
    stale = error_response(StaleEtag("j1", 3, 5))
    assert stale.headers["etag"] == '"5"'
    assert body_of(StaleEtag("j1", 3, 5))["etag"] == 5 and body_of(StaleEtag("j1", 3, 5))["object"] == "j1"
    assert body_of(InvalidSpec("layers[0].tasks", "empty")) == {"error": "empty", "field": "layers[0].tasks",
                                                               "object": None}
    assert error_response(Unauthorized("log in")).headers["www-authenticate"].startswith("Basic")


def test_a_subscription_filters_and_says_reload_when_it_overflows() -> None:
    async def run() -> list[Any]:
        sub = Subscription(feed=None, ids={"j1"}, user="ann", size=3)  # type: ignore[arg-type]
        records = [{"kind": "task", "id": f"j1.0.{n}", "job": "j1", "user": "ann"} for n in range(5)]
        sub.push([{"kind": "task", "id": "j2.0.0", "job": "j2", "user": "ann"},  # another job
                  {"kind": "job", "id": "j1", "user": "bob"},  # another user's
                  {"kind": "job", "id": "j1", "user": "ann"}])
        first = await sub.__anext__()
        sub.push(records)  # 5 into a queue of 3: the two oldest go
        reload = await sub.__anext__()
        sub.push(records[:2])
        return [first, reload, await sub.__anext__(), sub.drain_nowait()]

    first, reload, third, rest = asyncio.run(run())
    assert first == {"kind": "job", "id": "j1", "user": "ann"}
    assert reload == {"kind": "reload", "dropped": 2}
    assert third["id"] == "j1.0.0" and [r["id"] for r in rest] == ["j1.0.1"]


def test_sse_encoding() -> None:
    record = FeedRecord({"kind": "task", "rev": 7, "id": "j.0.0", "state": "RUNNING"})
    text = encode(record).decode()
    assert text.startswith("event: task\nid: 7\ndata: {") and text.endswith("}\n\n")
    assert encode(record) is encode(record)  # encoded once, shared by every subscriber
    assert encode({"data": "line\n"}, named=False).decode() == 'data: {"data": "line\\n"}\n\n'


def test_the_shared_watch_starts_with_the_first_subscriber_and_ends_when_none_is_left(monkeypatch: Any) -> None:
    """One watch for every subscriber; an idle server stops it (a stand-in client counts watches)."""
    import threading

    from conductor.web import feed as context

    monkeypatch.setattr(context, "FEED_IDLE", 0.1)
    watches: list[threading.Event] = []

    class Watching:
        def events(self, deliver: Any, all_users: bool, stop: threading.Event) -> None:
            watches.append(stop)
            deliver([{"kind": "node", "id": "n1", "user": None, "rev": 1}])
            stop.wait(30)

    feed = context.Feed(Watching())  # type: ignore[arg-type]

    async def run() -> Any:
        a, b = feed.subscribe(), feed.subscribe()
        got = await asyncio.wait_for(a.__anext__(), 5)
        await a.aclose()
        await asyncio.sleep(0.3)
        assert len(watches) == 1 and not watches[0].is_set()  # b still listens
        await b.aclose()
        await asyncio.sleep(0.3)
        assert watches[0].is_set()  # nobody left: the watch ended
        c = feed.subscribe()
        await asyncio.sleep(0.1)
        await c.aclose()
        return got

    assert asyncio.run(run())["id"] == "n1"
    assert len(watches) == 2
    feed.close()


def test_user_clients_are_kept_per_password_and_closed_when_idle_unless_held() -> None:
    from conductor.web.context import ClientPool

    closed: list[str] = []

    class Stand:  # a stand-in for a Client: only close() is used by the pool
        def __init__(self, name: str):
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

    pool = ClientPool(lambda user, password: Stand(f"{user}/{password}"), idle=100.0)  # type: ignore[arg-type,return-value]
    alice = pool.get("alice", "pw")
    assert pool.get("alice", "pw") is alice and pool.get("alice", "other") is not alice
    with pool.hold(alice):
        pool.reap(now=10_000_000.0)  # long idle, but a follow holds it
        assert "alice/pw" not in closed and closed == ["alice/other"]
    pool.reap(now=10_000_000.0)
    assert closed == ["alice/other", "alice/pw"]
    assert pool.get("alice", "pw") is not alice  # a fresh one
