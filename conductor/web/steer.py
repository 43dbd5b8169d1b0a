"""Steering over HTTP: pause, unpause, kill, skip, retry, add tasks, env and results.

Every change takes ``If-Match: <etag>`` (the etag ``show`` gave): a stale one is refused with 412,
the current etag in the body and the ``ETag`` header, and nothing written. Without it the change
applies to the current version, as the CLI's plain ``ID`` does.
"""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ..client import Client
from ..control import Result
from ..errors import InvalidSpec
from .errors import BadRequest
from .params import body, call, if_match, result, str_map

ACTIONS = ("pause", "unpause", "kill", "skip", "retry")


def _grace(data: Any) -> float:
    if data is None:
        return 10.0
    if not isinstance(data, dict):
        raise BadRequest("body", "must be a map such as {\"grace\": 10}")
    grace = data.get("grace", 10.0)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        raise InvalidSpec("grace", f"{grace!r} is not a number of seconds")
    return float(grace)


def _act(client: Client, action: str, some_id: str, etag: int | None, grace: float) -> list[Result]:
    if action == "pause":
        return client.pause(some_id, etag=etag)
    if action == "unpause":
        return client.unpause(some_id, etag=etag)
    if action == "kill":
        return client.kill(some_id, grace=grace, etag=etag)
    if action == "skip":
        return client.skip(some_id, grace=grace, etag=etag)
    return client.retry(some_id, etag=etag)


def _check_kind(client: Client, some_id: str, kind: str) -> None:
    parsed = client.locate(some_id)[0]
    if parsed.kind != kind:
        from ..errors import NotFound

        raise NotFound(f"{some_id} is a {parsed.kind} id, not a {kind} id")


def action_route(kind: str, action: str) -> Any:
    async def act(request: Request) -> JSONResponse:
        some_id, etag = request.path_params["id"], if_match(request)
        grace = _grace(await body(request, required=False))

        def work(c: Client) -> list[Result]:
            _check_kind(c, some_id, kind)
            return _act(c, action, some_id, etag, grace)

        return result(await call(request, work))

    act.__name__ = f"{action}_{kind}"
    act.__doc__ = f"""{action.capitalize()} a {kind} (as ``conductor {action}``).
    ---
    summary: {action.capitalize()} a {kind}
    parameters:
      - {{name: id, in: path, required: true, schema: {{type: string}}}}
      - {{name: If-Match, in: header, schema: {{type: string}}, description: the etag show gave}}
    requestBody:
      required: false
      content: {{application/json: {{schema: {{type: object, properties: {{grace: {{type: number}}}}}}}}}}
    responses:
      200: {{description: "{{id, done, etag}}: what was done"}}
      404: {{description: no such {kind}}}
      409: {{description: "the {kind}'s state does not allow it"}}
      412: {{description: "stale etag: the body's etag is the current one"}}
    """
    return act


async def add_tasks(request: Request) -> JSONResponse:
    """Add tasks to a layer that has not started.
    ---
    summary: Add tasks to a layer
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
      - {name: If-Match, in: header, schema: {type: string}}
    requestBody:
      content: {application/json: {schema: {type: array, items: {type: object}}}}
    responses:
      201: {description: "{ids}: the new tasks' ids"}
      409: {description: the layer has started}
      422: {description: a task is not valid}
    """
    layer_id, etag = request.path_params["id"], if_match(request)
    tasks = await body(request)
    if isinstance(tasks, dict) and "tasks" in tasks:
        tasks = tasks["tasks"]
    if not isinstance(tasks, list):
        raise InvalidSpec("tasks", "must be a list of tasks")

    def work(c: Client) -> list[str]:
        _check_kind(c, layer_id, "layer")
        return c.add_tasks(layer_id, tasks, etag=etag)

    return JSONResponse({"ids": await call(request, work)}, status_code=201)


def env_routes(kind: str) -> tuple[Any, Any]:
    async def get_env(request: Request) -> JSONResponse:
        some_id = request.path_params["id"]

        def work(c: Client) -> dict[str, str]:
            _check_kind(c, some_id, kind)
            return c.env(some_id)

        return JSONResponse(await call(request, work))

    async def set_env(request: Request) -> JSONResponse:
        some_id, etag = request.path_params["id"], if_match(request)
        changes = str_map(await body(request), "env", nulls=True)

        def work(c: Client) -> Result:
            _check_kind(c, some_id, kind)
            return c.set_env(some_id, changes, etag=etag)

        return result(await call(request, work))

    get_env.__name__, set_env.__name__ = f"get_{kind}_env", f"set_{kind}_env"
    get_env.__doc__ = f"""The env variables set on a {kind}.
    ---
    summary: Get a {kind}'s env
    parameters: [{{name: id, in: path, required: true, schema: {{type: string}}}}]
    responses: {{200: {{description: a map of names to values}}, 404: {{description: no such {kind}}}}}
    """
    set_env.__doc__ = f"""Set (null: remove) env variables of a {kind}; applies to tasks not started yet.
    ---
    summary: Change a {kind}'s env
    parameters:
      - {{name: id, in: path, required: true, schema: {{type: string}}}}
      - {{name: If-Match, in: header, schema: {{type: string}}}}
    requestBody: {{content: {{application/json: {{schema: {{type: object}}}}}}}}
    responses: {{200: {{description: "{{id, done, etag}}"}}, 412: {{description: stale etag}}}}
    """
    return get_env, set_env


async def set_result(request: Request) -> JSONResponse:
    """Set a task's result (the body's bytes).
    ---
    summary: Set a task's result
    parameters:
      - {name: id, in: path, required: true, schema: {type: string}}
      - {name: If-Match, in: header, schema: {type: string}}
    requestBody: {content: {application/octet-stream: {schema: {type: string, format: binary}}}}
    responses: {200: {description: "{id, done, etag}"}, 409: {description: over the cap}, 412: {description: stale etag}}
    """
    task_id, etag = request.path_params["id"], if_match(request)
    data = await request.body()
    return result(await call(request, lambda c: c.set_result(task_id, data, etag=etag)))


def routes(kinds: dict[str, str]) -> list[BaseRoute]:
    out: list[BaseRoute] = []
    for plural, kind in kinds.items():
        out += [Route(f"/{plural}/{{id}}/{action}", action_route(kind, action), methods=["POST"]) for action in ACTIONS]
        get_env, set_env = env_routes(kind)
        out += [Route(f"/{plural}/{{id}}/env", get_env, methods=["GET"]),
                Route(f"/{plural}/{{id}}/env", set_env, methods=["PATCH"])]
    out += [Route("/layers/{id}/tasks", add_tasks, methods=["POST"]),
            Route("/tasks/{id}/result", set_result, methods=["PUT"])]
    return out
