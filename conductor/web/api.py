"""The JSON HTTP API under ``/api/v1``: reading jobs, layers, tasks and nodes, and posting jobs.

Each route is a thin call of :class:`conductor.Client` (see :mod:`conductor.web.params`); its
docstring's YAML part (after ``---``) is its OpenAPI description (:mod:`conductor.web.openapi`).
Steering lives in :mod:`conductor.web.steer`, templates, messages and schedules in
:mod:`conductor.web.automation`, logs and events in :mod:`conductor.web.streams`.
"""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import InvalidSpec, NotFound
from . import automation, steer, streams
from .params import body, call, etag_header, q_bool, q_int, q_params

KINDS = {"jobs": "job", "layers": "layer", "tasks": "task"}


async def list_jobs(request: Request) -> JSONResponse:
    """List jobs, newest first, with progress counts (the CLI's ``show`` filters).
    ---
    summary: List jobs
    parameters:
      - {name: state, in: query, schema: {type: string}, description: only jobs in this state}
      - {name: user, in: query, schema: {type: string}, description: whose jobs (default the caller)}
      - {name: all_users, in: query, schema: {type: boolean}}
      - {name: name, in: query, schema: {type: string}, description: only names containing this}
      - {name: node, in: query, schema: {type: string}, description: only jobs with a task that ran there}
      - {name: limit, in: query, schema: {type: integer, default: 50}, description: "0: all"}
      - {name: offset, in: query, schema: {type: integer, default: 0}}
    responses:
      200: {description: "a list of job summaries: id, name, user, state, paused, counts, etag..."}
    """
    q = request.query_params
    filters: dict[str, Any] = dict(user=q.get("user") or None, all_users=q_bool(request, "all_users"),
                                   state=q.get("state") or None, name=q.get("name") or None,
                                   node=q.get("node") or None, limit=q_int(request, "limit", 50),
                                   offset=q_int(request, "offset", 0))
    return JSONResponse(await call(request, lambda c: c.jobs(**filters)))


async def post_job(request: Request) -> JSONResponse:
    """Validate and post a job (the body is the job file, JSON or YAML); nothing is written if
    anything is wrong with it.
    ---
    summary: Post a job
    parameters:
      - {name: paused, in: query, schema: {type: boolean}, description: post it paused}
      - {name: param, in: query, schema: {type: string}, description: "key=value for an input; repeat"}
    requestBody:
      content:
        application/json: {schema: {type: object}}
        application/yaml: {schema: {type: string}}
    responses:
      201: {description: "{id}: the new job's id"}
      400: {description: the body is not JSON or YAML}
      422: {description: "the job is not valid: error names the field"}
    """
    data = await body(request)
    if not isinstance(data, dict):
        raise InvalidSpec("body", "a job is a map (name, layers...)")
    paused, params = q_bool(request, "paused"), q_params(request)
    job_id = await call(request, lambda c: c.post(data, paused=paused, params=params))
    return JSONResponse({"id": job_id}, status_code=201, headers={"Location": f"/api/v1/jobs/{job_id}"})


def show_route(kind: str) -> Any:
    async def show(request: Request) -> JSONResponse:
        some_id = request.path_params["id"]
        tasks = q_int(request, "tasks", 20)
        after = request.query_params.get("after") or None
        found = await call(request, lambda c: c.show(some_id, tasks=tasks or 0, after=after))
        if found["kind"] != kind:
            raise NotFound(f"{some_id} is a {found['kind']} id, not a {kind} id")
        return JSONResponse(found, headers=etag_header(found.get("etag")))

    show.__name__ = f"show_{kind}"
    show.__doc__ = f"""Show a {kind}: {'its layers and a page of tasks per layer' if kind == 'job' else
        'its tasks, a page at a time' if kind == 'layer' else 'its history, result and log tail'}.
    ---
    summary: Show a {kind}
    parameters:
      - {{name: id, in: path, required: true, schema: {{type: string}}, description: "full id, unique prefix or
         suffix, or a job name"}}
      - {{name: tasks, in: query, schema: {{type: integer, default: 20}}, description: "tasks per layer (0: all)"}}
      - {{name: after, in: query, schema: {{type: string}}, description: "page on: the tasks after this one"}}
    responses:
      200: {{description: "the {kind}, with etag (also the ETag header)"}}
      404: {{description: no such {kind}}}
    """
    return show


async def nodes(request: Request) -> JSONResponse:
    """List live nodes: labels, slots, running tasks, host facts, lease renewals.
    ---
    summary: List nodes
    responses:
      200: {description: a list of nodes}
    """
    return JSONResponse(await call(request, lambda c: c.nodes()))


async def cluster(request: Request) -> JSONResponse:
    """etcd's members (health, leader, learner, raft lag) and raised alarms (NOSPACE...).
    ---
    summary: etcd members and alarms
    responses:
      200: {description: "{members, alarms}"}
      403: {description: this etcd user may not list members}
    """
    return JSONResponse(await call(request, lambda c: {"members": c.members(), "alarms": c.alarms()}))


async def get_result(request: Request) -> Response:
    """A task's result (the bytes it wrote to $CONDUCTOR_RESULT).
    ---
    summary: Get a task's result
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
    responses:
      200: {description: the result, application/octet-stream}
      404: {description: no such task, or it has no result}
    """
    task_id = request.path_params["id"]
    data = await call(request, lambda c: c.result(task_id))
    if data is None:
        raise NotFound(f"task {task_id} has no result")
    return Response(data, media_type="application/octet-stream")


def routes() -> list[BaseRoute]:
    """Every route of the API, relative to ``/api/v1``."""
    out: list[BaseRoute] = [Route("/jobs", list_jobs, methods=["GET"]), Route("/jobs", post_job, methods=["POST"])]
    for plural, kind in KINDS.items():
        out.append(Route(f"/{plural}/{{id}}", show_route(kind), methods=["GET"]))
    out += [Route("/nodes", nodes, methods=["GET"]), Route("/cluster", cluster, methods=["GET"]),
            Route("/tasks/{id}/result", get_result, methods=["GET"])]
    return out + steer.routes(KINDS) + automation.routes() + streams.routes()
