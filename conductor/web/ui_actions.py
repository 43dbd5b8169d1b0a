"""The pages' buttons: pause, unpause, kill, retry and skip, each with the etag the page showed.

``POST /ui/act/<action>/<id>`` with the form field ``etag`` calls the Client with ``etag=``, so a
change someone else made after the page was rendered is refused by etcd's compare (nothing is
written) and explained in words: what the object is now and at which etag, and to reload. The
pages' script posts with ``Accept: application/json`` and shows the ``message`` in place; a
browser without script gets a small page with the same words and a link back.
"""
from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import parse_qs, urlparse

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from ..client import Client
from ..errors import ConductorError, StaleEtag
from .context import WebContext
from .errors import BadRequest, status_of

ACTIONS = ("pause", "unpause", "kill", "retry", "skip")
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a kill or skip from the web


def stale_message(client: Client, exc: StaleEtag) -> str:
    """``task X changed since you loaded it: now RUNNING at etag 123 (the page showed etag 100);
    reload the page to see what changed.``"""
    try:
        now = client.show(exc.object_id, tasks=1)
        state = f"now {now['state']}{' (paused)' if now.get('paused_at') else ''} at etag {now['etag']}"
    except ConductorError:
        state = f"now at etag {exc.current}"
    return (f"{exc.object_id} changed since you loaded it: {state} (the page showed etag {exc.given}); "
            "nothing was done. Reload the page to see what changed, then decide again.")


def perform(client: Client, action: str, some_id: str, etag: int | None) -> str:
    """Do one action; returns what was done, in words. Raises StaleEtag, NotFound, Refused..."""
    if action == "pause":
        results = client.pause(some_id, etag=etag)
    elif action == "unpause":
        results = client.unpause(some_id, etag=etag)
    elif action == "kill":
        results = client.kill(some_id, etag=etag, grace=KILL_GRACE)
    elif action == "skip":
        results = client.skip(some_id, etag=etag, grace=KILL_GRACE)
    else:
        results = client.retry(some_id, etag=etag)
    return "; ".join(f"{r.id}: {r.done}" for r in results)


def foreign_origin(request: Request) -> str | None:
    """The origin of a cross-site POST (its ``Origin`` is not this server's address), else None."""
    origin = request.headers.get("origin")
    if origin is None or (origin != "null" and urlparse(origin).netloc == request.headers.get("host", "")):
        return None
    return origin


def parse_etag(text: str | None) -> int | None:
    if text is None or text.strip() == "":
        return None
    if not text.strip().isdigit():
        raise BadRequest("etag", f"{text!r} is not a number")
    return int(text)


class Actions:
    def __init__(self, ctx: WebContext, ui: Any):
        self.ctx = ctx
        self.ui = ui

    async def act(self, request: Request) -> Response:
        action, some_id = request.path_params["action"], request.path_params["id"]
        foreign = foreign_origin(request)
        if foreign:
            # another site's page posting here (cross-site request forgery): a browser sends its
            # Origin, and a page of ours never has another one
            return JSONResponse({"ok": False, "stale": False, "action": action, "id": some_id,
                                 "message": f"refused: a page from {foreign} may not steer Conductor"}, status_code=403)
        # the forms are urlencoded (the pages' script sends them so too): parsed here, so no
        # multipart library is needed
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        back = form.get("back") or "/ui/"
        wants_json = "application/json" in request.headers.get("accept", "")
        client = self.ctx.client_for(request)
        try:
            if action not in ACTIONS:
                raise BadRequest("action", f"{action!r} is not one of {', '.join(ACTIONS)}")
            etag = parse_etag(form.get("etag"))
            message = await run_in_threadpool(perform, client, action, some_id, etag)
            status, ok, stale = 200, True, False
        except StaleEtag as exc:
            message = await run_in_threadpool(stale_message, client, exc)
            status, ok, stale = 409, False, True
        except ConductorError as exc:
            message, status, ok, stale = str(exc), status_of(exc), False, False
        if wants_json:
            return JSONResponse({"ok": ok, "stale": stale, "message": message, "action": action, "id": some_id},
                                status_code=status)
        return HTMLResponse(self._page(message, ok, back), status_code=status)

    @staticmethod
    def _page(message: str, ok: bool, back: str) -> str:
        if not back.startswith("/") or back.startswith("//"):
            back = "/ui/"  # only our own pages: the form's field is not a way to send people elsewhere
        word = "Done" if ok else "Not done"
        return (f"<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
                f"<link rel=stylesheet href='/ui/static/ui.css'><main class=page><h1>{word}</h1>"
                f"<p class='flash {'ok' if ok else 'bad'}'>{escape(message)}</p>"
                f"<p><a href='{escape(back)}'>Back to the page</a></p></main>")
