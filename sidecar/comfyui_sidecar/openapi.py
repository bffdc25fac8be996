"""The OpenAPI 3 document, generated from the app's routes and the pydantic models.

Every route registered on the app appears in the document: a handler carries its operation (summary,
request model, answers) through the `documented` decorator, and a route whose handler has none is still
listed, with its docstring as summary, so an endpoint can never be left out.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from comfyui_sidecar.models import VERSION

Schema = type[BaseModel] | dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, tuple[Schema | None, str]]
    """status -> (JSON body schema or model, None for a non-JSON body; description)."""
    request: type[BaseModel] | None = None
    content_type: str = "application/json"
    """Of the 200 answer when its schema is None (e.g. text/plain for /metrics)."""


def documented(operation: Operation) -> Callable[[F], F]:
    """Attach the operation to a handler; `build_openapi` reads it from the route."""

    def attach(handler: F) -> F:
        handler.openapi = operation  # type: ignore[attr-defined]
        return handler

    return attach


def operation_of(handler: Callable[..., Any]) -> Operation:
    found = getattr(handler, "openapi", None)
    if isinstance(found, Operation):
        return found
    summary = (handler.__doc__ or handler.__name__).strip().splitlines()[0]
    return Operation(summary=summary, responses={200: (None, "see the documentation")})


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _schema(schema: Schema) -> dict[str, Any]:
    return _ref(schema) if isinstance(schema, type) else schema


def _operation_json(operation: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": operation.summary}
    if operation.request is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(operation.request)}},
        }
    responses: dict[str, Any] = {}
    for status, (schema, description) in sorted(operation.responses.items()):
        answer: dict[str, Any] = {"description": description}
        if schema is not None:
            answer["content"] = {"application/json": {"schema": _schema(schema)}}
        elif status == 200 and operation.content_type != "application/json":
            answer["content"] = {operation.content_type: {}}  # text, YAML or HTML: no JSON schema
        responses[str(status)] = answer
    out["responses"] = responses
    return out


def _models(operations: list[Operation]) -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for operation in operations:
        candidates: list[Any] = [operation.request]
        candidates += [schema for schema, _ in operation.responses.values()]
        for model in candidates:
            if isinstance(model, type):
                found.setdefault(model.__name__, model)
    return list(found.values())


def route_operations(app: web.Application) -> dict[str, dict[str, Operation]]:
    """path -> method (lower case) -> operation, for every route of the app (HEAD twins of GETs left out)."""
    paths: dict[str, dict[str, Operation]] = {}
    for route in app.router.routes():
        method = route.method.lower()
        path = route.resource.canonical if route.resource is not None else ""
        if method == "head" or not path:
            continue
        paths.setdefault(path, {})[method] = operation_of(route.handler)
    return dict(sorted(paths.items()))


def build_openapi(app: web.Application, port: int) -> dict[str, Any]:
    operations = route_operations(app)
    flat = [operation for methods in operations.values() for operation in methods.values()]
    _, top = models_json_schema(
        [(model, "validation") for model in _models(flat)], ref_template="#/components/schemas/{model}"
    )
    return {
        "openapi": "3.0.3",
        "info": {"title": "ComfyUI API", "version": VERSION},
        "servers": [{"url": f"http://localhost:{port}"}],
        "paths": {
            path: {method: _operation_json(operation) for method, operation in methods.items()}
            for path, methods in operations.items()
        },
        "components": {"schemas": dict(top.get("$defs", {}))},
    }


def docs_page(document: dict[str, Any]) -> str:
    """A self-contained HTML page (no CDN): the endpoints and the full document."""
    rows = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            codes = ", ".join(operation.get("responses", {}))
            rows.append(
                f"<tr><td>{method.upper()}</td><td>{html.escape(path)}</td>"
                f"<td>{html.escape(operation.get('summary', ''))}</td><td>{codes}</td></tr>"
            )
    body = html.escape(json.dumps(document, indent=2))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ComfyUI API</title></head><body>"
        f"<h1>ComfyUI API {VERSION}</h1><p>OpenAPI: <a href='/docs/json'>/docs/json</a>, "
        "<a href='/docs/yaml'>/docs/yaml</a></p><table border='1' cellpadding='4'>"
        "<tr><th>Method</th><th>Path</th><th>Summary</th><th>Status codes</th></tr>"
        + "".join(rows)
        + f"</table><pre>{body}</pre></body></html>"
    )
