"""One owner for every outbound request the sidecar makes on a caller's or a manifest's behalf.

`Egress` holds three clients, one per purpose, each under its own `EgressPolicy`:
- `download`: prompt inputs and models, `POST /download`, the manifest (follows checked redirects);
- `upload`: `http_upload` PUTs and S3 endpoints;
- `webhook`: `webhook`, `webhook_v2` (success and failure) and system webhooks (no redirects; in-cluster
  receivers allowed by `WEBHOOK_ALLOW_NETWORKS`). ComfyUI's own host:port and the sidecar's own port are never
  reachable through any of them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence

import aiohttp

from comfyui_sidecar.egress.addresses import AllowList
from comfyui_sidecar.egress.client import EgressClient
from comfyui_sidecar.egress.policy import EgressPolicy, Protected
from comfyui_sidecar.egress.settings import EgressSettings
from comfyui_sidecar.egress.urls import HTTP_SCHEMES, IPAddress, Url, parse_url

log = logging.getLogger(__name__)

DOWNLOAD_READ_BUFSIZE = 1 << 20
WEBHOOK_TIMEOUT_SECONDS = 10.0


def _addresses_of(host: str) -> frozenset[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return frozenset()
    return frozenset(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos)


def _protected(what: str, url: Url, own: frozenset[IPAddress]) -> Protected:
    addresses = frozenset({url.ip}) if url.ip is not None else _addresses_of(url.host)
    local = any(a.is_loopback or a.is_unspecified or a in own for a in addresses) or url.host == "localhost"
    return Protected(what, url.host, url.effective_port, addresses, local)


class Egress:
    """The outbound clients of one sidecar. `start` learns ComfyUI's and this host's addresses (it is also
    run by the first request); `close` closes every session."""

    def __init__(
        self, settings: EgressSettings, *, comfy_url: str | None = None, own_port: int | None = None
    ) -> None:
        self._comfy_url = comfy_url
        self._own_port = own_port
        self._started = False
        self._lock = asyncio.Lock()
        allow = AllowList.parse(settings.download_allow_networks)
        connect = settings.download_connect_timeout_seconds
        self.download = EgressClient(
            EgressPolicy("download", HTTP_SCHEMES, allow, "DOWNLOAD_ALLOW_NETWORKS"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=connect, sock_read=settings.download_read_timeout_seconds
            ),
            max_redirects=settings.download_max_redirects,
            read_bufsize=DOWNLOAD_READ_BUFSIZE,
            ready=self.start,
        )
        self.upload = EgressClient(
            EgressPolicy("upload", HTTP_SCHEMES, allow, "DOWNLOAD_ALLOW_NETWORKS"),
            timeout=aiohttp.ClientTimeout(total=settings.upload_timeout_seconds, sock_connect=connect),
            ready=self.start,
        )
        webhook_allow = allow + AllowList.parse(settings.webhook_allow_networks)
        self.webhook = EgressClient(
            EgressPolicy("webhook", HTTP_SCHEMES, webhook_allow, "WEBHOOK_ALLOW_NETWORKS"),
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS),
            ready=self.start,
        )

    @property
    def clients(self) -> Sequence[EgressClient]:
        return (self.download, self.upload, self.webhook)

    async def start(self) -> None:
        if self._started:
            return
        async with self._lock:
            if self._started:
                return
            own = await asyncio.to_thread(_addresses_of, socket.gethostname())
            protected: list[Protected] = []
            if self._comfy_url:
                comfy = parse_url(self._comfy_url)
                protected.append(await asyncio.to_thread(_protected, "ComfyUI's own address", comfy, own))
            if self._own_port:
                me = parse_url(f"http://127.0.0.1:{self._own_port}")
                protected.append(_protected("the sidecar's own address", me, own))
            for client in self.clients:
                client.policy.protected = tuple(protected)
                client.policy.own_addresses = own
            self._started = True

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
