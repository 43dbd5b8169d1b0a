"""The web UI's pages: the job list, a job as a tree, a task, the nodes, templates and schedules.

Each page is a model (a function of the request's Client and the query: what the page shows, read
through :class:`conductor.client.Client` like the CLI does) and a template whose live part is a
fragment of its own (``_<page>.html``). The page is rendered whole once; :mod:`.ui_live` renders
the fragment again when etcd reports a write to the keys the page shows, and sends
it to the browser over server-sent events: the pages never poll. The buttons post to
:mod:`.ui_actions`. Reads are plain Client calls, so what etcd's auth lets the user see is what
the page shows; errors become pages that name the object (404, 403, 400).

The contract with the server (``conductor/web/app.py``): :func:`routes` takes the server's
:class:`~.context.WebContext` (``client_for(request)``, ``hold(client)``, ``refused(client)``,
``templates_dir``, ``static_dir``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..client import Client
from ..errors import AuthFailed, ConductorError, NotFound, PermissionDenied
from . import ui_actions, ui_format, ui_live
from .context import WebContext
from .errors import REALM, status_of
from .feed import Watched

PAGE_TASKS = 50  # tasks per layer on a job page: a page reads this many whatever the job's size
JOBS_PAGE = 50

Model = Callable[[Client, dict[str, str]], dict[str, Any]]


@dataclass(frozen=True)
class Page:
    """A page: its full template, its live fragment, how to read it, and what it watches: the
    keys (:data:`~.feed.Watched`) whose writes change it (:class:`~.feed.KeyWatch`)."""

    template: str
    fragment: str
    model: Model
    watched: Callable[[Client, dict[str, str]], list[Watched]]


def jobs_model(client: Client, query: dict[str, str]) -> dict[str, Any]:
    everyone = query.get("all") in ("1", "on", "true")
    offset = int(query["offset"]) if query.get("offset", "").isdigit() else 0
    jobs = client.jobs(all_users=everyone, state=query.get("state") or None, name=query.get("name") or None,
                       limit=JOBS_PAGE + 1, offset=offset)
    return {"jobs": jobs[:JOBS_PAGE], "more": len(jobs) > JOBS_PAGE, "offset": offset, "page_size": JOBS_PAGE,
            "filters": {"state": query.get("state", ""), "name": query.get("name", ""), "all": everyone},
            "title": "Jobs", "back": "/ui/"}


def job_model(client: Client, query: dict[str, str]) -> dict[str, Any]:
    tree = client.show(query["id"], tasks=PAGE_TASKS, after=query.get("after") or None)
    if tree["kind"] != "job":  # a layer id: its job's page shows the layer
        tree = client.show(tree["job"], tasks=PAGE_TASKS, after=query.get("after") or None)
    return {"job": tree, "after": query.get("after") or "", "page_size": PAGE_TASKS,
            "title": f"{tree['name']} · job", "back": f"/ui/jobs/{tree['id']}"}


def task_model(client: Client, query: dict[str, str]) -> dict[str, Any]:
    task = client.show(query["id"])
    if task["kind"] != "task":
        raise NotFound(f"{query['id']} is a {task['kind']}, not a task")
    return {"task": task, "title": f"{task['name']} · task", "back": f"/ui/tasks/{task['id']}"}


def nodes_model(client: Client, query: dict[str, str]) -> dict[str, Any]:
    members: list[dict[str, Any]] | None
    try:
        members = [{**m, "hex": f"{m['id']:x}"} for m in client.store.members()]
    except (PermissionDenied, AuthFailed):
        members = None  # a user without the root role may not list members: the page says so
    nodes = client.nodes()
    return {"nodes": nodes, "members": members, "slots": sum(int(n.get("slots") or 0) for n in nodes),
            "running": sum(int(n.get("running") or 0) for n in nodes), "title": "Nodes"}


def schedules_model(client: Client, query: dict[str, str]) -> dict[str, Any]:
    return {"templates": client.templates(), "schedules": client.schedules(), "title": "Templates and schedules"}


def jobs_watched(client: Client, query: dict[str, str]) -> list[Watched]:
    k = client.keys
    if query.get("all") in ("1", "on", "true"):
        # every user's jobs (admins, or etcd auth off): their counts in users/, starts and ends in active/
        return [(k.user(), False), (k.active(), False)]
    return [(k.job(client.user), False), (k.user(client.user), False)]  # the jobs, their counter keys


def job_watched(client: Client, query: dict[str, str]) -> list[Watched]:
    """The job's own key, its layers and its tasks (its id may be a prefix, a name or a layer id)."""
    _, full, owner = client.locate(query["id"])
    job, k = full.split(".")[0], client.keys
    return [(k.job(owner, job), True), (k.layer(owner, job + "."), False), (k.task(owner, job + "."), False)]


def task_watched(client: Client, query: dict[str, str]) -> list[Watched]:
    _, full, owner = client.locate(query["id"])
    return [(client.keys.task(owner, full), True), (client.keys.result(owner, full), True)]


def nodes_watched(client: Client, query: dict[str, str]) -> list[Watched]:
    return [(client.keys.node(), False)]  # the nodes and, in their keys, what they run


def schedules_watched(client: Client, query: dict[str, str]) -> list[Watched]:
    k, user = client.keys, client.user
    return [(k.template(user), False), (k.shared_template(), False), (k.schedule(user), False),
            (k.fire(user, "").removesuffix("/"), False)]  # fires/<user>/: every schedule's fires


PAGES: dict[str, Page] = {
    "jobs": Page("jobs.html", "_jobs.html", jobs_model, jobs_watched),
    "job": Page("job.html", "_job.html", job_model, job_watched),
    "task": Page("task.html", "_task.html", task_model, task_watched),
    "nodes": Page("nodes.html", "_nodes.html", nodes_model, nodes_watched),
    "schedules": Page("schedules.html", "_schedules.html", schedules_model, schedules_watched),
}


# the words over an error page; its status is the API's (:func:`.errors.status_of`: one table)
TITLES = {404: "Not found", 403: "Permission denied", 401: "Log in again", 400: "Bad request",
          422: "Not accepted", 409: "Not done", 412: "Not done", 503: "etcd is unreachable"}


def error_title(status: int) -> str:
    return TITLES.get(status, "Something went wrong")


class UI:
    """The pages' request handlers (sync: Starlette runs them in its thread pool, where the
    Client's blocking etcd calls belong)."""

    def __init__(self, ctx: WebContext):
        self.ctx = ctx
        self.templates = Jinja2Templates(directory=str(ctx.templates_dir))
        self.templates.env.filters.update(ui_format.FILTERS)

    def render_error(self, request: Request, exc: ConductorError, what: str, client: Client | None = None) -> Response:
        status = status_of(exc)
        if status == 401 and client is not None:
            self.ctx.refused(client)  # etcd refused its password: a corrected login starts afresh
        return self.templates.TemplateResponse(request, "error.html", {
            "status": status, "heading": error_title(status), "what": what, "message": str(exc),
            "title": error_title(status)}, status_code=status,
            headers={"WWW-Authenticate": REALM} if status == 401 else None)

    def show(self, request: Request, name: str, query: dict[str, str], what: str) -> Response:
        page = PAGES[name]
        client: Client | None = None
        try:
            client = self.ctx.client_for(request)  # no login at all (etcd auth on): a 401 page that asks for one
            model = page.model(client, query)
        except ConductorError as exc:
            return self.render_error(request, exc, what, client)
        return self.templates.TemplateResponse(request, page.template, {
            **model, "page": name, "fragment": page.fragment, "live_url": f"/ui/live/{name}?{urlencode(query)}"})

    def home(self, request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    def jobs(self, request: Request) -> Response:
        return self.show(request, "jobs", dict(request.query_params), "the job list")

    def job(self, request: Request) -> Response:
        some_id = request.path_params["id"]
        return self.show(request, "job", {**request.query_params, "id": some_id}, f"job {some_id}")

    def task(self, request: Request) -> Response:
        some_id = request.path_params["id"]
        if some_id.count(".") < 2:  # a job or layer id typed into a task address
            return RedirectResponse(f"/ui/jobs/{some_id}", status_code=307)
        return self.show(request, "task", {"id": some_id}, f"task {some_id}")

    def nodes(self, request: Request) -> Response:
        return self.show(request, "nodes", {}, "the nodes")

    def schedules(self, request: Request) -> Response:
        return self.show(request, "schedules", {}, "the templates and schedules")

    def not_found(self, request: Request) -> Response:
        return self.render_error(request, NotFound(f"no page {request.url.path}"), request.url.path)

    def fragment(self, name: str, model: dict[str, Any]) -> str:
        """A page's live part, rendered with the same model as the page."""
        return self.templates.get_template(PAGES[name].fragment).render(**model, page=name)


def routes(ctx: WebContext) -> list[BaseRoute]:
    """The UI's routes under ``/ui`` (and ``/`` sending there), its live streams under ``/ui/live``,
    its buttons under ``/ui/act`` and its CSS and JS under ``/ui/static``."""
    ui = UI(ctx)
    live = ui_live.Live(ctx, ui, PAGES)
    act = ui_actions.Actions(ctx, ui)
    return [
        Route("/", ui.home),
        Route("/ui/", ui.jobs, name="ui-jobs"),
        Route("/ui/jobs/{id}", ui.job, name="ui-job"),
        Route("/ui/tasks/{id}", ui.task, name="ui-task"),
        Route("/ui/nodes", ui.nodes, name="ui-nodes"),
        Route("/ui/schedules", ui.schedules, name="ui-schedules"),
        Route("/ui/live/log/{id}", live.log),
        Route("/ui/live/{page}", live.page),
        Route("/ui/act/{action}/{id}", act.act, methods=["POST"]),
        Mount("/ui/static", StaticFiles(directory=str(ctx.static_dir)), name="ui-static"),
        Route("/ui/{rest:path}", ui.not_found),
    ]
