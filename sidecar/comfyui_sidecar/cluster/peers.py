"""The current peers of this sidecar (the other replicas of the instance): name -> base URL.

Two sources, merged: a static list (PEERS, used by tests on loopback) and a DNS name (PEERS_DNS; in
Kubernetes a headless Service with publishNotReadyAddresses, whose A/AAAA records are the pod IPs; a peer is
named by its IP). This sidecar is always a peer of itself. A call to another peer only ever goes to a URL from
this map, so an id naming an unknown peer can never make the sidecar call an address of the caller's choosing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)
MIN_FORCED_REFRESH_S = 1.0


def _url_for_ip(ip: str, port: int) -> str:
    host = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    return f"http://{host}:{port}"


class Peers:
    def __init__(
        self,
        self_name: str,
        *,
        static: Mapping[str, str] | None = None,
        dns_name: str | None = None,
        port: int = 3000,
        refresh_s: float = 5.0,
    ) -> None:
        self.self_name = self_name
        self._static = dict(static or {})
        self._dns_name = dns_name
        self._port = port
        self._refresh_s = refresh_s
        self._dns: dict[str, str] = {}
        self._last_resolve = 0.0
        self._lock = asyncio.Lock()

    @property
    def map(self) -> dict[str, str]:
        return {**self._dns, **self._static}

    def names(self) -> list[str]:
        """Every peer name, this sidecar included."""
        return sorted(set(self.map) | {self.self_name})

    def url(self, name: str) -> str | None:
        return self.map.get(name)

    def others(self) -> dict[str, str]:
        return {name: url for name, url in self.map.items() if name != self.self_name}

    async def refresh(self, *, force: bool = False) -> None:
        """Resolve PEERS_DNS again (at most once a second when forced; keeps the old list on failure)."""
        if self._dns_name is None:
            return
        async with self._lock:
            now = time.monotonic()
            if force and now - self._last_resolve < MIN_FORCED_REFRESH_S:
                return
            self._last_resolve = now
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    self._dns_name, self._port, type=socket.SOCK_STREAM
                )
            except (OSError, UnicodeError) as error:
                log.warning("could not resolve the peers (%s): %s", self._dns_name, error)
                return
            ips = sorted({str(info[4][0]) for info in infos})
            self._dns = {ip: _url_for_ip(ip, self._port) for ip in ips}

    async def find(self, name: str) -> str | None:
        """The URL of peer `name`, resolving again once when it is not known (a pod that just started)."""
        url = self.url(name)
        if url is None:
            await self.refresh(force=True)
            url = self.url(name)
        return url

    async def run(self) -> None:
        """Refresh forever (a background task)."""
        while True:
            with contextlib.suppress(Exception):
                await self.refresh()
            await asyncio.sleep(self._refresh_s)
