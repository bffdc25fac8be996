"""SSRF guard: which URLs and addresses a download may reach.

Checked twice: on the URL (scheme, literal IP hosts in any spelling) before each request and each redirect,
and on every address DNS returns (`GuardedResolver`), so a name that resolves to an internal address is
refused after resolution, on the connection actually made.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})

# Cloud metadata endpoints, refused even though some are not in a private range.
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("169.254.170.2"),
        ipaddress.ip_address("100.100.100.200"),
        ipaddress.ip_address("fd00:ec2::254"),
    }
)

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedURLError(Exception):
    """The URL or one of its addresses is not allowed (message is safe to show to the client)."""


@dataclass(frozen=True)
class AllowList:
    """Networks and host names the operator explicitly allows although they are internal."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Entries are CIDRs (`10.0.0.0/8`), single addresses (`127.0.0.1`, `::1`) or host names."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows_address(self, addr: IPAddress) -> bool:
        return any(addr.version == net.version and addr in net for net in self.networks)

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts


def _unmap(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.sixtofour is not None:
            return addr.sixtofour
        if addr in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 well-known prefix
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def blocked_reason(addr: IPAddress) -> str | None:
    """Why this address may not be fetched, or None if it is a public address."""
    inner = _unmap(addr)
    if inner in METADATA_ADDRESSES or addr in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        (inner.is_loopback, "a loopback address"),
        (inner.is_link_local, "a link-local address"),
        (isinstance(inner, ipaddress.IPv6Address) and inner.is_site_local, "a site-local address"),
        (inner.is_unspecified, "an unspecified address"),
        (inner.is_multicast, "a multicast address"),
        (inner.is_reserved, "a reserved address"),
        (inner.is_private, "a private address"),
        (isinstance(inner, ipaddress.IPv4Address) and inner in _CGNAT, "a shared (CGNAT) address"),
        (not inner.is_global, "a non-global address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """An IP address in any spelling a resolver would accept: dotted, IPv6 (bracketed or not, with zone),
    or the inet_aton forms `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`."""
    text = host.strip().strip("[]")
    if "%" in text:
        text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


class AddressGuard:
    """Decides whether a URL or an address may be fetched."""

    def __init__(self, allow: AllowList, schemes: Iterable[str] = ALLOWED_SCHEMES) -> None:
        self.allow = allow
        self.schemes = frozenset(schemes)

    def check_url(self, url: str) -> None:
        """Refuse bad schemes, missing hosts and internal literal IP hosts. DNS names are checked later, on
        the addresses they resolve to."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise BlockedURLError(f"invalid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            shown = scheme or "none"
            raise BlockedURLError(
                f"URL scheme {shown!r} is not allowed (allowed: {', '.join(sorted(self.schemes))})"
            )
        try:
            host = parts.hostname
        except ValueError as exc:
            raise BlockedURLError(f"invalid URL host: {exc}") from None
        if not host:
            raise BlockedURLError("URL has no host")
        if self.allow.allows_host(host):
            return
        addr = parse_ip_literal(host)
        if addr is not None:
            self.check_address(addr, host)

    def check_address(self, addr: IPAddress, host: str) -> None:
        if self.allow.allows_address(addr) or self.allow.allows_address(_unmap(addr)):
            return
        reason = blocked_reason(addr)
        if reason is not None:
            raise BlockedURLError(
                f"refusing to fetch from {host}: it resolves to {addr}, {reason} "
                "(add it to DOWNLOAD_ALLOW_NETWORKS to allow it)"
            )


class GuardedResolver(AbstractResolver):
    """A resolver that refuses every internal address a host name resolves to (unless allowed)."""

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner: AbstractResolver = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._guard.allow.allows_host(host):
            return results
        for result in results:
            addr = ipaddress.ip_address(result["host"].split("%", 1)[0])
            self._guard.check_address(addr, host)
        return results

    async def close(self) -> None:
        await self._inner.close()


def guard_from_settings(allow_entries: Sequence[str], extra_schemes: Sequence[str] = ()) -> AddressGuard:
    return AddressGuard(AllowList.parse(allow_entries), ALLOWED_SCHEMES | set(extra_schemes))
