"""The sidecar's answers in comfyui-api's shapes (its Fastify error bodies included), and reading a JSON body
into a pydantic model with a 4xx for anything wrong. No routes, no state: the router uses these too."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from comfyui_sidecar import jsonbody, request_body
from comfyui_sidecar.request_body import BodyError


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )


async def files_json_response(request: web.Request, body: dict[str, Any], status: int) -> web.StreamResponse:
    """A body with base64 files, streamed slice by slice so the event loop keeps answering /health."""
    if jsonbody.encoded_size(body) <= jsonbody.SLICE:
        return web.Response(
            body=jsonbody.encode_small(body), status=status, content_type="application/json", charset="utf-8"
        )
    parts = jsonbody.plan(body)
    response = web.StreamResponse(status=status)
    response.content_type = "application/json"
    response.charset = "utf-8"
    response.content_length = jsonbody.plan_size(parts)
    await response.prepare(request)
    async for piece in jsonbody.iter_plan(parts):
        await response.write(piece)
    await response.write_eof()
    return response


def bad_request(message: str, location: str | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if location is not None:
        body["location"] = location
    body.update(extra)
    return json_response(body, 400)


def server_error(status: int, message: str, comfy_error: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"statusCode": status, "error": _status_reason(status), "message": message}
    if comfy_error:
        body["comfy_error"] = comfy_error
    return json_response(body, status)


def _status_reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _fastify_error(status: int, code: str, message: str) -> web.Response:
    return json_response(
        {"statusCode": status, "code": code, "error": _status_reason(status), "message": message}, status
    )


def validation_message(error: ValidationError) -> tuple[str, str]:
    """(error text, location) for the first few schema errors."""
    parts = []
    location = ""
    for index, item in enumerate(error.errors(include_url=False)[:3]):
        loc = ".".join(str(p) for p in item["loc"])
        if index == 0:
            location = loc or "body"
        parts.append(f"{loc or 'body'}: {item['msg']}")
    return "Bad Request: " + "; ".join(parts), location


_FASTIFY_CODES = {
    408: "FST_ERR_REQUEST_TIMEOUT",
    413: "FST_ERR_CTP_BODY_TOO_LARGE",
    415: "FST_ERR_CTP_INVALID_MEDIA_TYPE",
}


def body_error_response(error: BodyError) -> web.Response:
    """400 {error, location} for bad JSON; 408/413/415 in Fastify's shape."""
    if error.status == 400:
        return bad_request(error.message, error.location)
    return _fastify_error(error.status, _FASTIFY_CODES.get(error.status, "FST_ERR"), error.message)


async def read_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The JSON object body (request_body.read_json), or the error response."""
    try:
        data = await request_body.read_json(request)
    except BodyError as error:
        return body_error_response(error)
    if not isinstance(data, dict):
        return bad_request("Bad Request: the body must be a JSON object", "body")
    return data


async def read_json(request: web.Request, model: type[BaseModel]) -> Any:
    """Read, decode and validate a JSON object body; the model or an error response."""
    data = await read_object(request)
    return data if isinstance(data, web.Response) else validate(data, model)


def validate(data: dict[str, Any], model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        message, location = validation_message(error)
        return bad_request(message, location)


def fastify_error_plain(status: int, message: str) -> web.Response:
    return json_response({"message": message, "error": _status_reason(status), "statusCode": status}, status)
