"""Which IP addresses are internal, and the allow lists that open some of them. Pure."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from comfyui_sidecar.egress.urls import IPAddress

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata endpoints (AWS, ECS, EKS Pod Identity, Alibaba, GCP/Azure use 169.254.169.254 too).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "169.254.170.23",
        "100.100.100.200",
        "fd00:ec2::254",
        "fd00:ec2::23",
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# What WEBHOOK_ALLOW_NETWORKS allows by default: the private ranges pods and services live in.
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")


def unmap(addr: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv6 spelling (`::ffff:`, 6to4, NAT64), else the address itself."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr.sixtofour is not None:
            return addr.sixtofour
        if addr in _NAT64:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def never_reason(addr: IPAddress) -> str | None:
    """Addresses no allow list opens: metadata, link-local, unspecified, multicast."""
    inner = unmap(addr)
    if inner in METADATA_ADDRESSES or addr in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if inner.is_link_local or addr.is_link_local:
        return "a link-local address"
    if inner.is_unspecified or addr.is_unspecified:
        return "an unspecified address"
    if inner.is_multicast or addr.is_multicast:
        return "a multicast address"
    return None


def internal_reason(addr: IPAddress) -> str | None:
    """Why this address is internal (refused unless an allow list opens it), or None for a public address."""
    inner = unmap(addr)
    checks = (
        (inner.is_loopback, "a loopback address"),
        (isinstance(inner, ipaddress.IPv6Address) and inner.is_site_local, "a site-local address"),
        (inner.is_reserved, "a reserved address"),
        (inner.is_private, "a private address"),
        (isinstance(inner, ipaddress.IPv4Address) and inner in _CGNAT, "a shared (CGNAT) address"),
        (not inner.is_global, "a non-global address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


@dataclass(frozen=True)
class AllowList:
    """Networks and host names allowed although internal."""

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

    def __add__(self, other: AllowList) -> AllowList:
        return AllowList(self.networks + other.networks, self.hosts | other.hosts)

    def allows_address(self, addr: IPAddress) -> bool:
        inner = unmap(addr)
        return any(a.version == net.version and a in net for net in self.networks for a in (addr, inner))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts
