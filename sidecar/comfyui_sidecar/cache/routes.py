"""`POST /download` (contract 2.7): fetch a model URL into the cache's model folder `model_type`.

The shared model volume is read-only, so the link goes to `<cache>/models/<model_type>/<filename>`, which
ComfyUI searches through the extra_model_paths.yaml the cache writes.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from comfyui_sidecar.cache.naming import url_basename
from comfyui_sidecar.cache.store import ModelCache
from comfyui_sidecar.egress.policy import EgressRefused
from comfyui_sidecar.egress.urls import InvalidUrl
from comfyui_sidecar.fetching import Credential, DownloadAuth, FetchError
from comfyui_sidecar.openapi import Operation, documented
from comfyui_sidecar.request_body import BodyError, read_json

log = logging.getLogger(__name__)


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str
    model_type: str
    filename: str | None = None
    wait: bool = False
    auth: DownloadAuth | None = None


def _error(message: str, status: int = 400, location: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if location:
        body["location"] = location
    return web.json_response(body, status=status)


def _validation_message(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"Bad Request: {loc}: {first['msg']}", f"body.{loc}" if loc else "body"


def add_download_routes(app: web.Application, cache: ModelCache) -> None:
    """Register `POST /download` on `app`, backed by `cache`."""
    app.add_routes(download_routes(cache))


_DOWNLOADED = {
    "type": "object",
    "properties": {
        name: {"type": kind}
        for name, kind in (
            ("url", "string"),
            ("model_type", "string"),
            ("filename", "string"),
            ("status", "string"),
            ("size", "integer"),
            ("duration", "number"),
            ("sha256", "string"),
        )
    },
}
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "location": {"type": "string"}}}
DOWNLOAD_OPERATION = Operation(
    "Download a model URL into the cache's model folder model_type",
    {
        200: (_DOWNLOADED, "downloaded (wait: true)"),
        202: (_DOWNLOADED, "started (wait: false)"),
        400: (_ERROR, "invalid request, JSON, URL, model_type, or the download failed"),
        408: (_ERROR, "the body did not arrive in time"),
        413: (_ERROR, "body too large"),
        415: (_ERROR, "content type is not application/json, charset or Content-Encoding unsupported"),
    },
    request=DownloadRequest,
)


def download_routes(cache: ModelCache) -> list[web.RouteDef]:
    """The route table of `POST /download` (background downloads are owned, and cancelled, by the cache)."""

    @documented(DOWNLOAD_OPERATION)
    async def download(request: web.Request) -> web.Response:
        try:
            raw = await read_json(request)
        except BodyError as exc:
            return _error(exc.message, status=exc.status, location=exc.location)
        try:
            req = DownloadRequest.model_validate(raw)
        except ValidationError as exc:
            message, location = _validation_message(exc)
            return _error(message, location=location)
        try:
            ref = cache.reference(req.url)
            await cache.check_reachable(ref)  # refused targets are a 400 now, also with wait: false
        except FetchError as exc:
            return _error(exc.message, location="body.url")
        except (InvalidUrl, EgressRefused) as exc:
            return _error(exc.message, location="body.url")
        if not cache.is_model_folder(req.model_type):
            known = ", ".join(cache.model_folders())
            message = f"Bad Request: unknown model_type {req.model_type!r} (known: {known})"
            return _error(message, location="body.model_type")
        filename = req.filename or url_basename(req.url) or None
        creds = [Credential(url_pattern="**", auth=req.auth)] if req.auth is not None else []
        shown_url = ref.url.public

        async def run() -> web.Response:
            done = await cache.download(req.url, folder=req.model_type, filename=filename, credentials=creds)
            return web.json_response(
                {
                    "url": shown_url,
                    "model_type": req.model_type,
                    "filename": done.link_name,
                    "status": "completed",
                    "size": done.entry.size,
                    "duration": round(done.seconds, 3),
                    "sha256": done.entry.sha256,
                }
            )

        if req.wait:
            try:
                return await run()
            except FetchError as exc:
                return _error(exc.message, location="body.url")

        async def background() -> None:
            try:
                await run()
            except FetchError as exc:
                log.error("download %s failed: %s", ref.url.redacted, exc.message)
            except Exception:
                log.exception("download %s failed", ref.url.redacted)

        cache.run_in_background(background())
        return web.json_response(
            {"url": shown_url, "model_type": req.model_type, "filename": filename, "status": "started"},
            status=202,
        )

    return [web.post("/download", download)]
