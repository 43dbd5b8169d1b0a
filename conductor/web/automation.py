"""Templates, messages and schedules over HTTP (as ``conductor template``, ``send``, ``schedule``)."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..errors import InvalidSpec
from .errors import BadRequest
from .params import body, call, q_bool, str_map


def _params_of(data: Any) -> dict[str, str]:
    """``{"params": {...}}`` or a bare map of params; nothing: none."""
    if data is None:
        return {}
    if isinstance(data, dict) and set(data) <= {"params"}:
        return str_map(data.get("params"), "params")
    return str_map(data, "params")


async def list_templates(request: Request) -> JSONResponse:
    """Stored templates.
    ---
    summary: List templates
    responses: {200: {description: a list of templates}}
    """
    return JSONResponse(await call(request, lambda c: c.templates()))


async def add_template(request: Request) -> JSONResponse:
    """Store a template (the body is the template file, JSON or YAML).
    ---
    summary: Add a template
    parameters: [{name: replace, in: query, schema: {type: boolean}, description: replace one of that name}]
    requestBody: {content: {application/json: {schema: {type: object}}, application/yaml: {schema: {type: string}}}}
    responses:
      201: {description: the stored template}
      409: {description: one of that name exists}
      422: {description: not valid}
    """
    data = await body(request)
    if not isinstance(data, dict):
        raise InvalidSpec("body", "a template is a map (name, inputs, layers...)")
    replace = q_bool(request, "replace")
    return JSONResponse(await call(request, lambda c: c.add_template(data, replace=replace)), status_code=201)


async def get_template(request: Request) -> JSONResponse:
    """One template.
    ---
    summary: Show a template
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    responses: {200: {description: the template}, 404: {description: no such template}}
    """
    name = request.path_params["name"]
    return JSONResponse(await call(request, lambda c: c.template(name)))


async def remove_template(request: Request) -> Response:
    """Remove a template.
    ---
    summary: Remove a template
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    responses: {204: {description: removed}, 404: {description: no such template}}
    """
    name = request.path_params["name"]
    await call(request, lambda c: c.remove_template(name))
    return Response(status_code=204)


async def post_template(request: Request) -> JSONResponse:
    """Post a job from a template; the body is ``{"params": {...}}`` (or the bare map of params).
    ---
    summary: Post a job from a template
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}}
      - {name: paused, in: query, schema: {type: boolean}}
    requestBody: {required: false, content: {application/json: {schema: {type: object}}}}
    responses: {201: {description: "{id}"}, 404: {description: no such template}, 422: {description: bad params}}
    """
    name, paused = request.path_params["name"], q_bool(request, "paused")
    params = _params_of(await body(request, required=False))
    job_id = await call(request, lambda c: c.post_template(name, params, paused=paused))
    return JSONResponse({"id": job_id}, status_code=201, headers={"Location": f"/api/v1/jobs/{job_id}"})


async def send_message(request: Request) -> JSONResponse:
    """Send a message: post one job for every template it triggers.
    ---
    summary: Send a message
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    requestBody: {required: false, content: {application/json: {schema: {type: object}}}}
    responses: {200: {description: "{ids}: the posted jobs"}}
    """
    name = request.path_params["name"]
    params = _params_of(await body(request, required=False))
    return JSONResponse({"ids": await call(request, lambda c: c.send(name, params))})


async def list_schedules(request: Request) -> JSONResponse:
    """Schedules with their next fire times.
    ---
    summary: List schedules
    responses: {200: {description: a list of schedules}}
    """
    return JSONResponse(await call(request, lambda c: c.schedules()))


SCHEDULE_FIELDS = {"name", "cron", "template", "params", "overlap", "catch_up", "tz"}


async def add_schedule(request: Request) -> JSONResponse:
    """Add a schedule: ``{"name", "cron", "template", "params", "overlap", "catch_up", "tz"}``.
    ---
    summary: Add a schedule
    parameters: [{name: replace, in: query, schema: {type: boolean}}]
    requestBody: {content: {application/json: {schema: {type: object, required: [name, cron, template]}}}}
    responses: {201: {description: the schedule}, 409: {description: one of that name exists}, 422: {description: not valid}}
    """
    data = await body(request)
    if not isinstance(data, dict):
        raise InvalidSpec("body", "a schedule is a map: name, cron, template...")
    unknown = sorted(set(data) - SCHEDULE_FIELDS)
    if unknown:
        raise InvalidSpec(unknown[0], f"unknown field (known: {', '.join(sorted(SCHEDULE_FIELDS))})")
    for required in ("name", "cron", "template"):
        if not isinstance(data.get(required), str) or not data[required]:
            raise InvalidSpec(required, "is required (text)")
    catch_up = data.get("catch_up", 0)
    if isinstance(catch_up, bool) or not isinstance(catch_up, int):
        raise InvalidSpec("catch_up", f"{catch_up!r} is not a whole number")
    args: dict[str, Any] = dict(params=str_map(data.get("params"), "params"), overlap=str(data.get("overlap", "allow")),
                                catch_up=catch_up, replace=q_bool(request, "replace"), tz=str(data.get("tz", "UTC")))
    found = await call(request, lambda c: c.add_schedule(data["name"], data["cron"], data["template"], **args))
    return JSONResponse(found, status_code=201)


async def get_schedule(request: Request) -> JSONResponse:
    """One schedule with its last fires.
    ---
    summary: Show a schedule
    parameters:
      - {name: name, in: path, required: true, schema: {type: string}}
      - {name: fires, in: query, schema: {type: integer, default: 20}}
    responses: {200: {description: the schedule}, 404: {description: no such schedule}}
    """
    name = request.path_params["name"]
    try:
        fires = int(request.query_params.get("fires", "20"))
    except ValueError:
        raise BadRequest("fires", "is not a whole number") from None
    return JSONResponse(await call(request, lambda c: c.schedule(name, fires)))


async def remove_schedule(request: Request) -> Response:
    """Remove a schedule.
    ---
    summary: Remove a schedule
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    responses: {204: {description: removed}, 404: {description: no such schedule}}
    """
    name = request.path_params["name"]
    await call(request, lambda c: c.remove_schedule(name))
    return Response(status_code=204)


def pause_route(paused: bool) -> Any:
    async def pause(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        await call(request, lambda c: c.pause_schedule(name, paused))
        return JSONResponse({"name": name, "done": "paused" if paused else "unpaused"})

    verb = "pause" if paused else "unpause"
    pause.__name__ = f"{verb}_schedule"
    pause.__doc__ = f"""{verb.capitalize()} a schedule.
    ---
    summary: {verb.capitalize()} a schedule
    parameters: [{{name: name, in: path, required: true, schema: {{type: string}}}}]
    responses: {{200: {{description: done}}, 404: {{description: no such schedule}}}}
    """
    return pause


def routes() -> list[BaseRoute]:
    return [Route("/templates", list_templates, methods=["GET"]),
            Route("/templates", add_template, methods=["POST"]),
            Route("/templates/{name}", get_template, methods=["GET"]),
            Route("/templates/{name}", remove_template, methods=["DELETE"]),
            Route("/templates/{name}/jobs", post_template, methods=["POST"]),
            Route("/messages/{name}", send_message, methods=["POST"]),
            Route("/schedules", list_schedules, methods=["GET"]),
            Route("/schedules", add_schedule, methods=["POST"]),
            Route("/schedules/{name}", get_schedule, methods=["GET"]),
            Route("/schedules/{name}", remove_schedule, methods=["DELETE"]),
            Route("/schedules/{name}/pause", pause_route(True), methods=["POST"]),
            Route("/schedules/{name}/unpause", pause_route(False), methods=["POST"])]
