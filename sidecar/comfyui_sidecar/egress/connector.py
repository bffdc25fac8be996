"""Where the policy meets the network: a resolver that checks every address DNS returns, and a socket factory
that checks the address of every connection actually made (literal IPs, redirects, S3 endpoints included)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from comfyui_sidecar.egress.policy import EgressPolicy


class GuardedResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver, then refuses the name if any address is not allowed."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner: AbstractResolver = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        addresses = [ipaddress.ip_address(r["host"].split("%", 1)[0]) for r in results]
        self._policy.check_resolved(host, port, addresses)
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(policy: EgressPolicy) -> Any:
    """A socket factory for aiohttp's connector: the last check, on the address a socket connects to."""

    def create(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        host = str(sockaddr[0])
        policy.check_address(ipaddress.ip_address(host.split("%", 1)[0]), int(sockaddr[1]), host)
        return socket.socket(family=family, type=type_, proto=proto)

    return create


def connector_args(policy: EgressPolicy) -> dict[str, Any]:
    """The connector arguments that put a connector under `policy` (also given to aiobotocore)."""
    return {"resolver": GuardedResolver(policy), "socket_factory": guarded_socket_factory(policy)}


def guarded_connector(policy: EgressPolicy, *, limit: int = 64) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, ttl_dns_cache=30, **connector_args(policy))
