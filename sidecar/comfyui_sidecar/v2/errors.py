"""The v2 error envelope: `{"error": {"code", "message", "details"}}` with the contract's status codes."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from comfyui_sidecar.v2.schemas import ErrorBody, ErrorEnvelope

MAX_MESSAGE = 500


class V2Error(Exception):
    """An answer other than 2xx. `retry_after` (integer seconds) becomes the Retry-After header."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def response(self) -> web.Response:
        return error_response(
            self.status, self.code, self.message, self.details, retry_after=self.retry_after
        )


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    *,
    retry_after: int | None = None,
) -> web.Response:
    text = " ".join(message.split())[:MAX_MESSAGE]
    body = ErrorEnvelope(error=ErrorBody(code=code, message=text, details=details)).model_dump(mode="json")
    headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
    return web.Response(
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def not_found(what: str = "job") -> V2Error:
    return V2Error(404, "not_found", f"no such {what}")


def invalid_request(message: str, details: dict[str, Any] | None = None) -> V2Error:
    return V2Error(400, "invalid_request", message, details)
