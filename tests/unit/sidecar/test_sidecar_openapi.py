"""The served OpenAPI document is generated from the app's routes: no endpoint can be left out."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from comfyui_sidecar.app import QuietBadRequests, build_fetcher, create_app
from comfyui_sidecar.openapi import build_openapi
from comfyui_sidecar.settings import Settings


def app_with_cache(tmp_path: Path) -> web.Application:
    settings = Settings(comfy_home=tmp_path, cache_dir=tmp_path / "cache")
    return create_app(settings, fetcher=build_fetcher(settings), start_lifecycle=False)


def test_every_route_of_the_app_is_in_the_document(tmp_path: Path) -> None:
    app = app_with_cache(tmp_path)
    document = build_openapi(app, 3000)
    routes = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    listed = {(method, path) for path, methods in document["paths"].items() for method in methods}
    assert ("post", "/download") in routes
    assert listed == routes


def test_a_route_added_without_documentation_is_still_listed(tmp_path: Path) -> None:
    app = app_with_cache(tmp_path)

    async def extra(request: web.Request) -> web.Response:
        """Something new."""
        return web.Response()

    app.router.add_get("/extra", extra)
    assert build_openapi(app, 3000)["paths"]["/extra"]["get"]["summary"] == "Something new."


def test_bodies_and_answers_refer_to_the_models(tmp_path: Path) -> None:
    document = build_openapi(app_with_cache(tmp_path), 3000)
    schemas = document["components"]["schemas"]
    assert {"PromptRequest", "PromptResponse", "ErrorResponse", "WebpOptions", "DownloadRequest"} <= set(
        schemas
    )
    post = document["paths"]["/prompt"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PromptRequest"
    }
    assert {"200", "202", "400", "413", "415"} <= set(post["responses"])
    download = document["paths"]["/download"]["post"]
    assert download["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "DownloadRequest"
    )
    assert "#/$defs" not in json.dumps(document)


def test_requests_aiohttp_cannot_parse_are_one_info_line_without_traceback() -> None:
    try:
        raise BadHttpMessage("Invalid header value char")
    except BadHttpMessage:
        info = sys.exc_info()
    record = logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "Error handling request", (), info)
    QuietBadRequests().filter(record)
    assert (record.levelname, record.exc_info) == ("INFO", None)
    assert record.getMessage() == "bad request: Invalid header value char"
