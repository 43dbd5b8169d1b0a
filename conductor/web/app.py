"""The web application: the JSON API under ``/api/v1``, ``/openapi.json``, ``/metrics``, ``/healthz``
and the web UI's routes (:mod:`conductor.web.ui`), over one :class:`WebContext`."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from .. import codec, metrics
from ..errors import ConductorError, StoreUnavailable
from . import api, errors, openapi
from .context import WebContext, WebSettings

log = logging.getLogger("conductor.web")


async def healthz(request: Request) -> JSONResponse:
    """Is this node's session alive (its node key, on its lease, is in etcd)? For ``serve``
    without a node: is etcd reachable?
    ---
    summary: Health
    responses: {200: {description: alive}, 503: {description: "the session is gone, or etcd is unreachable"}}
    """
    ctx: WebContext = request.app.state.ctx
    node = ctx.settings.node
    try:
        if not node:
            revision = await run_in_threadpool(ctx.shared.store.revision)
            return JSONResponse({"ok": True, "etcd": "reachable", "revision": revision})
        kv = await run_in_threadpool(ctx.shared.store.get, ctx.shared.keys.node(node))
    except StoreUnavailable as exc:
        return JSONResponse({"ok": False, "node": node or None, "reason": f"etcd is unreachable: {exc}"}, 503)
    if kv is None:
        return JSONResponse({"ok": False, "node": node, "reason": f"node {node} has no live session in etcd"}, 503)
    return JSONResponse({"ok": True, "node": node, "lease": codec.unpack(kv.value).get("lease")})


def _tasks_by_state(ctx: WebContext) -> dict[str, int]:
    totals: dict[str, int] = {}
    for job in ctx.shared.jobs(all_users=True, state="RUNNING", limit=0):
        for state, n in job["counts"].items():
            if state != "total":
                totals[state.upper()] = totals.get(state.upper(), 0) + n
    return totals


def metrics_route(ctx: WebContext) -> Any:
    registry = metrics.registry(ctx.settings.metrics_dir, [metrics.TasksByState(lambda: _tasks_by_state(ctx))])

    async def serve_metrics(request: Request) -> Response:
        """Prometheus metrics: the node's own (from its metric files) and tasks by state (from etcd).
        ---
        summary: Prometheus metrics
        responses: {200: {description: Prometheus text format}}
        """
        return Response(await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)

    return serve_metrics


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, wrong method): JSON under /api, text elsewhere."""
    assert isinstance(exc, HTTPException)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": exc.detail, "field": None, "object": None}, exc.status_code, exc.headers)
    return PlainTextResponse(exc.detail, exc.status_code, exc.headers)


async def _reap(ctx: WebContext) -> None:
    while True:
        await asyncio.sleep(60)
        await run_in_threadpool(ctx.reap)


def make_app(settings: WebSettings) -> Starlette:
    """The application for ``settings``; its etcd clients are closed when it shuts down."""
    ctx = WebContext(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(lambda: ctx.auth)  # asked of etcd now, not on a first request
        except StoreUnavailable as exc:
            log.warning("etcd is unreachable (%s); whether it wants a login is asked again on the first request",
                        exc)
        reaper = asyncio.create_task(_reap(ctx))
        yield
        reaper.cancel()
        ctx.close()

    routes: list[BaseRoute] = [Mount("/api/v1", routes=api.routes()),
                               Route("/metrics", metrics_route(ctx), methods=["GET"]),
                               Route("/healthz", healthz, methods=["GET"])]
    routes.append(Route("/openapi.json", openapi.route(routes), methods=["GET"]))  # the API's routes, not the UI's
    from . import ui
    app = Starlette(routes=[*routes, *ui.routes(ctx)], lifespan=lifespan,
                    exception_handlers={ConductorError: errors.handle, HTTPException: http_error})
    app.state.ctx = ctx
    return app
