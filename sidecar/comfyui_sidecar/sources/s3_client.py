"""S3 clients (aiobotocore) under the egress policy, and S3 errors in words.

Why aiobotocore and not boto3 in a thread: it runs on aiohttp, so the egress connector (the resolver and the
socket factory that check every address) is the one S3 connections go through, bodies stream on the event loop
with the same byte cap as HTTP, and a cancelled prompt cancels its transfer. boto3's urllib3 has no hook for
the address check and would hold a thread per transfer.

Credentials: a per-request `s3` credential (contract 4.4: access key, secret, session token, endpoint, region)
gets a client of its own, closed after use. Without one, the pod's credentials are used through botocore's
chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_WEB_IDENTITY_TOKEN_FILE +
AWS_ROLE_ARN (IRSA), the container and instance providers. The endpoint is the credential's, else
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS's; the region the credential's, else AWS_REGION /
AWS_DEFAULT_REGION. Addressing is path-style, as upstream.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from comfyui_sidecar.egress.client import EgressClient, refusal_in
from comfyui_sidecar.egress.policy import EgressRefused
from comfyui_sidecar.egress.urls import InvalidUrl, parse_url
from comfyui_sidecar.fetching import S3Auth

RETRY_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})


class S3Failure(Exception):
    """An S3 call failed; `message` is safe to show, `http_status` is S3's answer (if any)."""

    def __init__(self, message: str, *, http_status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.retryable = retryable


def explain(error: BaseException, what: str) -> S3Failure:
    """An S3 failure in words a client can act on (a wrong key is a 403 that says so)."""
    refused = refusal_in(error)
    if refused is not None:
        return S3Failure(refused.message)
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code") or "Error")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        hint = ""
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            hint = ": S3 refused the credentials"
        elif code in ("NoSuchKey", "NoSuchBucket", "404"):
            hint = ": no such object"
        return S3Failure(
            f"S3 {code} (HTTP {status}) for {what}{hint}",
            http_status=status,
            retryable=code in RETRY_CODES or (isinstance(status, int) and status >= 500),
        )
    if isinstance(error, NoCredentialsError):
        return S3Failure(
            f"no S3 credentials for {what}: give an s3 credential in `credentials`, "
            "or AWS_* settings to the pod"
        )
    if isinstance(error, NoRegionError):
        return S3Failure(f"no S3 region for {what}: set AWS_REGION or the credential's region")
    transient = isinstance(error, (BotoCoreError, aiohttp.ClientError, TimeoutError, ConnectionError))
    return S3Failure(f"S3 request for {what} failed: {type(error).__name__}", retryable=transient)


def pod_configured() -> bool:
    """S3 is set up for the pod (a region or an endpoint), as upstream enables its S3 provider."""
    names = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
    return any(os.environ.get(name) for name in names)


def _env_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class S3Clients:
    """Makes aiobotocore S3 clients whose connections go through `egress`. `close` closes the shared one."""

    def __init__(self, egress: EgressClient, *, connect_timeout: float, read_timeout: float) -> None:
        self.egress = egress
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._session = get_session()
        self._shared: Any = None
        self._stack = AsyncExitStack()

    def _config(self) -> AioConfig:
        return AioConfig(
            connector_args=self.egress.connector_args(),
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
        )

    def _check_endpoint_url(self, endpoint: str | None) -> None:
        if not endpoint:
            return
        try:
            self.egress.check(parse_url(endpoint))
        except (InvalidUrl, EgressRefused) as exc:
            raise S3Failure(f"S3 endpoint refused: {exc.message}") from None

    def check_endpoint(self, auth: S3Auth | None) -> None:
        """The static egress check of the endpoint `auth` (or the pod) would use; raises S3Failure."""
        self._check_endpoint_url((auth.endpoint if auth is not None else None) or _env_endpoint())

    @asynccontextmanager
    async def client(self, auth: S3Auth | None) -> AsyncIterator[Any]:
        """A client for `auth` (its own, closed afterwards) or the shared client of the pod's credentials."""
        if auth is not None:
            self._check_endpoint_url(auth.endpoint or _env_endpoint())
            async with self._session.create_client(
                "s3",
                region_name=auth.region,
                endpoint_url=auth.endpoint or _env_endpoint(),
                aws_access_key_id=auth.access_key_id,
                aws_secret_access_key=auth.secret_access_key,
                aws_session_token=auth.session_token,
                config=self._config(),
            ) as own:
                yield own
            return
        if self._shared is None:
            self._check_endpoint_url(_env_endpoint())
            self._shared = await self._stack.enter_async_context(
                self._session.create_client("s3", endpoint_url=_env_endpoint(), config=self._config())
            )
        yield self._shared

    async def close(self) -> None:
        await self._stack.aclose()
        self._shared = None
