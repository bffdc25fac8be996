"""Calls between peers: forward a client's request to the peer that owns a job or asset, ask every peer
(scatter), or make an internal call (idempotency claims).

Targets come only from `Peers` (never from a request), requests carry the hop header so a peer answers locally
and never forwards again, and the API token (when set) authenticates them. These calls stay on the pod network
and do not go through the egress policy for user-supplied URLs (which refuses private addresses).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from comfyui_sidecar.cluster.peers import Peers
from comfyui_sidecar.v2.links import HOP_HEADER, External

log = logging.getLogger(__name__)

_REQUEST_HEADERS = ("Content-Type", "Range", "Accept", "Idempotency-Key", "User-Agent")
_RESPONSE_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "Retry-After",
    "Cache-Control",
    "X-Accel-Buffering",
    "Content-Disposition",
    "Content-Security-Policy",
    "X-Content-Type-Options",
)
CONNECT_RETRY_S = 0.5


class PeerUnreachable(Exception):
    """The peer is listed but did not answer."""


@dataclass(frozen=True)
class PeerAnswer:
    name: str
    status: int
    body: Any


class PeerClient:
    def __init__(
        self,
        peers: Peers,
        session: aiohttp.ClientSession,
        *,
        token: str | None,
        timeout_s: float,
        connect_timeout_s: float = 3.0,
    ) -> None:
        self.peers = peers
        self.session = session
        self.token = token
        self.timeout_s = timeout_s
        # In-cluster connects take milliseconds; a pod that is gone never answers the SYN. Waiting long for it
        # would hold the caller for the whole timeout (twice, with the retry).
        self.connect_timeout_s = min(connect_timeout_s, timeout_s)

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {HOP_HEADER: "1"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    async def forward(self, request: web.Request, base_url: str, ext: External) -> web.StreamResponse:
        """Proxy `request` to the peer at `base_url` and stream its answer back (bodies, events, bytes)."""
        headers = {name: request.headers[name] for name in _REQUEST_HEADERS if name in request.headers}
        headers.update(ext.forward_headers())
        body = await request.read() if request.can_read_body else None
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.connect_timeout_s, sock_read=max(60.0, self.timeout_s)
        )
        upstream = await self._open(request.method, base_url + str(request.rel_url), headers, body, timeout)
        try:
            response = web.StreamResponse(status=upstream.status)
            for name in _RESPONSE_HEADERS:
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            if request.method == "HEAD":
                await response.prepare(request)
                return response
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientError, TimeoutError):
                pass  # the client left, or the owner went silent mid-stream: the client reconnects
            return response
        finally:
            upstream.release()

    async def _open(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        limits: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        for attempt in (1, 2):
            try:
                return await self.session.request(
                    method,
                    url,
                    headers=self._headers(headers),
                    data=body,
                    timeout=limits,
                    allow_redirects=False,
                )
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                if attempt == 2:
                    raise PeerUnreachable(
                        f"peer {url.split('/api', maxsplit=1)[0]} did not answer: {type(error).__name__}"
                    ) from None
                await asyncio.sleep(CONNECT_RETRY_S)
        raise AssertionError("unreachable")

    async def call(
        self,
        base_url: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One internal call; (status, parsed JSON body or None). Raises PeerUnreachable."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, connect=self.connect_timeout_s)
        try:
            async with self.session.request(
                method,
                base_url + path,
                params=params,
                json=json_body,
                headers=self._headers(headers),
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = None
                return response.status, parsed
        except (aiohttp.ClientError, TimeoutError) as error:
            raise PeerUnreachable(f"peer {base_url} did not answer: {type(error).__name__}") from None

    async def scatter(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None
    ) -> list[PeerAnswer]:
        """The same call to every other peer at once; peers that do not answer are left out (logged)."""
        others = self.peers.others()

        async def one(name: str, url: str) -> PeerAnswer | None:
            try:
                status, body = await self.call(url, method, path, params=params)
            except PeerUnreachable as error:
                log.info("%s", error)
                return None
            return PeerAnswer(name, status, body)

        answers = await asyncio.gather(*(one(name, url) for name, url in sorted(others.items())))
        return [answer for answer in answers if answer is not None]

    async def download(self, base_url: str, path: str, sink: Any) -> int:
        """GET `path` from a peer and feed its bytes to `sink.write`; the HTTP status (200 when complete)."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.connect_timeout_s, sock_read=max(60.0, self.timeout_s)
        )
        try:
            async with self.session.get(
                base_url + path, headers=self._headers(), timeout=timeout
            ) as response:
                if response.status != 200:
                    return response.status
                async for chunk in response.content.iter_chunked(256 * 1024):
                    sink.write(chunk)
                return 200
        except (aiohttp.ClientError, TimeoutError) as error:
            raise PeerUnreachable(f"peer {base_url} did not answer: {type(error).__name__}") from None
