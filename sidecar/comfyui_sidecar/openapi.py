"""The OpenAPI 3 document, generated from the pydantic request and response models."""

from __future__ import annotations

import html
import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from comfyui_sidecar.models import (
    VERSION,
    ErrorResponse,
    HealthResponse,
    InterruptRequest,
    InterruptResponse,
    PromptRequest,
    PromptResponse,
    ReadyResponse,
    ServerError,
)

_MODELS: tuple[type[BaseModel], ...] = (
    PromptRequest,
    PromptResponse,
    ErrorResponse,
    ServerError,
    HealthResponse,
    ReadyResponse,
    InterruptRequest,
    InterruptResponse,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel] | dict[str, Any], description: str) -> dict[str, Any]:
    schema = _ref(model) if isinstance(model, type) else model
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_openapi(port: int) -> dict[str, Any]:
    _, top = models_json_schema(
        [
            (model, "serialization" if model.__name__.endswith("Response") else "validation")
            for model in _MODELS
        ],
        ref_template="#/components/schemas/{model}",
    )
    schemas = dict(top.get("$defs", {}))
    models_map = {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "Liveness", "responses": {"200": _json(HealthResponse, "alive")}}},
        "/ready": {
            "get": {
                "summary": "Readiness (warm, ComfyUI connected, queue below MAX_QUEUE_DEPTH)",
                "responses": {"200": _json(ReadyResponse, "ready"), "503": _json(ReadyResponse, "not ready")},
            }
        },
        "/models": {
            "get": {
                "summary": "Model files per ComfyUI model folder",
                "responses": {
                    "200": _json(models_map, "folder -> file names"),
                    "502": _json(ServerError, ""),
                },
            }
        },
        "/prompt": {
            "post": {
                "summary": "Run a ComfyUI prompt",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(PromptRequest)}},
                },
                "responses": {
                    "200": _json(PromptResponse, "finished (synchronous)"),
                    "202": _json(PromptResponse, "accepted; results go to the webhook / upload"),
                    "400": _json(ErrorResponse, "invalid request or prompt"),
                    "409": _json(ErrorResponse, "a prompt with this id is already running"),
                    "413": _json(ServerError, "body larger than MAX_BODY_SIZE_MB"),
                    "415": _json(ServerError, "content type is not application/json"),
                    "500": _json(ServerError, "ComfyUI failed to run the prompt (comfy_error has details)"),
                    "502": _json(ServerError, "ComfyUI unreachable or lost the prompt"),
                    "503": _json(ServerError, "shutting down"),
                    "504": _json(ServerError, "PROMPT_TIMEOUT_S exceeded"),
                },
            }
        },
        "/interrupt": {
            "post": {
                "summary": "Interrupt a running prompt by request id",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(InterruptRequest)}},
                },
                "responses": {
                    "200": _json(InterruptResponse, "interrupted"),
                    "404": _json(InterruptResponse, "unknown or finished id"),
                },
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "ComfyUI API", "version": VERSION},
        "servers": [{"url": f"http://localhost:{port}"}],
        "paths": paths,
        "components": {"schemas": schemas},
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
