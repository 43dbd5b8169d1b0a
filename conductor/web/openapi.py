"""``/openapi.json``: an OpenAPI 3 description of every API route, from the YAML part of each
route's docstring (Starlette's SchemaGenerator), with the error shape every route shares."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.schemas import SchemaGenerator

from .. import __version__

ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string", "nullable": True},
                                          "object": {"type": "string", "nullable": True},
                                          "etag": {"type": "integer", "description": "412 only: the current etag"}}}
BASE = {"openapi": "3.0.3",
        "info": {"title": "Conductor HTTP API", "version": __version__,
                 "description": "The Python client of Conductor over HTTP. Errors are JSON "
                                "{error, field, object}; with etcd auth on, HTTP Basic with your etcd user."},
        "components": {"schemas": {"Error": ERROR},
                       "securitySchemes": {"etcdUser": {"type": "http", "scheme": "basic"}}},
        "security": [{"etcdUser": []}]}


def schema(routes: list[BaseRoute]) -> dict[str, Any]:
    generator = SchemaGenerator(BASE)
    out = generator.get_schema(routes)
    for info in generator.get_endpoints(routes):  # an operationId each, and the shared error shape
        operation = out["paths"].get(info.path, {}).get(info.http_method)
        if operation is None:
            continue
        operation.setdefault("operationId", info.func.__name__)
        for status, answer in operation.get("responses", {}).items():
            if str(status)[0] in "45" and isinstance(answer, dict):
                answer.setdefault("content", {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}})
    return out


def route(routes: list[BaseRoute]) -> Any:
    cached: list[dict[str, Any]] = []

    async def openapi(request: Request) -> JSONResponse:
        """This description.
        ---
        summary: OpenAPI description
        responses: {200: {description: OpenAPI 3 JSON}}
        """
        if not cached:
            cached.append(schema(routes))
        return JSONResponse(cached[0])

    return openapi
