"""`EgressClient`: the only way the sidecar sends a request on a caller's or a manifest's behalf.

One client per purpose (download, upload, webhook), each with its own policy, connector and timeouts.
Redirects are followed one hop at a time, each hop parsed and checked; credentials go only to the origin they
were given for; bodies are read through `iter_body`, which stops at the byte cap.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from comfyui_sidecar.egress.connector import GuardedResolver, connector_args, guarded_connector
from comfyui_sidecar.egress.policy import EgressPolicy, EgressRefused
from comfyui_sidecar.egress.urls import InvalidUrl, Url, parse_url, with_query

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class EgressError(Exception):
    """An outbound request failed; `message` is safe to show (no credentials, no query strings)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True)
class RequestAuth:
    """Headers and query parameters a credential adds; sent only to the URL's origin, never logged."""

    headers: Mapping[str, str] = field(default_factory=dict)
    query: tuple[tuple[str, str], ...] = ()


NO_AUTH = RequestAuth()


def refusal_in(error: BaseException) -> EgressRefused | None:
    """The policy's refusal behind an aiohttp connection error, if that is what it is."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, EgressRefused):
            return current
        nested = getattr(current, "os_error", None)
        if isinstance(nested, EgressRefused):
            return nested
        current = current.__cause__ or current.__context__
    return None


def describe(error: BaseException) -> str:
    """A connection error in words, without the URL some aiohttp errors print (it may carry secrets)."""
    refused = refusal_in(error)
    if refused is not None:
        return refused.message
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return f"cannot resolve host {error.host}"
    if isinstance(error, aiohttp.ClientConnectorError):
        reason = error.os_error.strerror or type(error.os_error).__name__
        return f"cannot connect to {error.host}:{error.port}: {reason}"
    if isinstance(error, (aiohttp.InvalidURL, aiohttp.ClientResponseError)):
        return type(error).__name__
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error).strip() or type(error).__name__


class EgressClient:
    """Outbound HTTP under one policy. Sessions are made on first use and closed by `close`."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        timeout: aiohttp.ClientTimeout,
        max_redirects: int = 0,
        read_bufsize: int = 1 << 16,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.policy = policy
        self.timeout = timeout
        self.max_redirects = max_redirects
        self.read_bufsize = read_bufsize
        self._ready = ready
        self._session: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        await self.ready()
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=guarded_connector(self.policy),
                timeout=self.timeout,
                auto_decompress=False,
                trust_env=False,
                read_bufsize=self.read_bufsize,
            )
        return self._session

    def connector_args(self) -> dict[str, Any]:
        """For clients that build their own aiohttp connector (aiobotocore): the same checks."""
        return connector_args(self.policy)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check(self, url: Url) -> None:
        """The policy's URL check (scheme, protected endpoints, literal IPs). Raises EgressRefused."""
        self.policy.check_url(url)

    async def check_target(self, text: str) -> Url:
        """A target given when a prompt is accepted (webhook, upload): parsed and checked now, so a bad target
        is refused before anything runs. Raises InvalidUrl or EgressRefused (both with a `message`)."""
        url = parse_url(text)
        await self.check_resolved(url)
        return url

    async def check_resolved(self, url: Url) -> None:
        """The URL check, and for a host name the check of every address it resolves to now (connections are
        checked again when made)."""
        self.check(url)
        if url.ip is not None:
            return
        await self.ready()
        resolver = GuardedResolver(self.policy)
        try:
            await resolver.resolve(url.host, url.effective_port, socket.AF_UNSPEC)
        except EgressRefused:
            raise
        except OSError as exc:
            raise InvalidUrl(f"cannot resolve host {url.host}: {exc.strerror or exc}") from None
        finally:
            await resolver.close()

    async def ready(self) -> None:
        if self._ready is not None:
            await self._ready()

    @asynccontextmanager
    async def request(
        self,
        method: str,
        url: Url,
        *,
        headers: Mapping[str, str] | None = None,
        auth: RequestAuth = NO_AUTH,
        data: Any = None,
        deadline: aiohttp.ClientTimeout | None = None,
        follow_redirects: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request; yield the final response (closed, not drained, when the block raises).

        Raises EgressRefused (policy), EgressError (connection, redirects), InvalidUrl (a bad Location)."""
        session = await self.session()
        current = url
        hops = self.max_redirects if follow_redirects else 0
        for hop in range(hops + 1):
            self.check(current)
            same_origin = current.origin == url.origin
            sent_headers = {**(headers or {}), **(auth.headers if same_origin else {})}
            target = with_query(current, auth.query if same_origin else ())
            try:
                response = await session.request(
                    method,
                    target,
                    headers=sent_headers,
                    data=data,
                    allow_redirects=False,
                    timeout=deadline or self.timeout,
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                refused = refusal_in(exc)
                if refused is not None:
                    raise EgressRefused(refused.message) from None
                retryable = not isinstance(exc, aiohttp.ClientConnectorDNSError)
                raise EgressError(describe(exc), retryable=retryable) from None
            if follow_redirects and response.status in REDIRECT_STATUSES and "Location" in response.headers:
                location = response.headers["Location"]
                response.release()
                if hop == hops:
                    raise EgressError(f"more than {hops} redirects")
                current = current.join(location)
                continue
            try:
                yield response
            except BaseException:
                response.close()
                raise
            response.release()
            return


async def iter_body(
    response: aiohttp.ClientResponse, *, max_bytes: int, already: int = 0
) -> AsyncIterator[bytes]:
    """The body in the pieces the socket delivered, stopping at the cap: as soon as more than `max_bytes`
    (counting `already`, bytes kept from earlier attempts) has come off the socket, the connection is closed
    and EgressError raised. No byte past the cap is handed on."""
    content = response.content
    while True:
        data, end_of_http_chunk = await content.readchunk()
        if already + content.total_bytes > max_bytes:
            response.close()
            raise EgressError(f"response exceeds the maximum size of {max_bytes} bytes")
        if data:
            yield data
        elif not end_of_http_chunk:
            return


async def read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """A whole (small) body, stopping at the cap."""
    return b"".join([chunk async for chunk in iter_body(response, max_bytes=max_bytes)])
