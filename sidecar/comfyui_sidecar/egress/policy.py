"""The egress policy: which URLs and which addresses an outbound request may reach. Pure (no I/O).

Three checks, one owner:
- `check_url` before every request and every redirect: the scheme, ComfyUI's own host:port, literal IP hosts
  in any spelling;
- `check_address` on every address a connection is actually made to (the connector's socket factory) and on
  every address DNS returns (the resolver), so a name that resolves to an internal address is refused on the
  connection itself, with no window for DNS rebinding;
- the allow list (`DOWNLOAD_ALLOW_NETWORKS`; webhooks also `WEBHOOK_ALLOW_NETWORKS`) opens internal addresses,
  never metadata, link-local, unspecified or multicast addresses, and never ComfyUI's or the sidecar's own
  port.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from comfyui_sidecar.egress.addresses import AllowList, internal_reason, never_reason, unmap
from comfyui_sidecar.egress.urls import IPAddress, Url

Purpose = Literal["download", "upload", "webhook"]
VOUCH_SECONDS = 300.0
_VERBS: dict[str, str] = {
    "download": "refusing to fetch from",
    "upload": "refusing to upload to",
    "webhook": "refusing to send a webhook to",
}


class EgressRefused(ConnectionRefusedError):
    """The policy refuses a URL or an address. An OSError, so aiohttp's connector hands it on as the cause of
    a connection error. `message` is safe to show to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Protected:
    """An endpoint no outbound request may reach: ComfyUI's own, or the sidecar's own.

    `local`: the endpoint is on this host, so every loopback and unspecified address and every address of this
    host (`own_addresses`) at `port` reaches it."""

    what: str
    host: str
    port: int
    addresses: frozenset[IPAddress]
    local: bool

    def hit(self, addr: IPAddress, port: int, own_addresses: frozenset[IPAddress]) -> bool:
        if port != self.port:
            return False
        inner = unmap(addr)
        if addr in self.addresses or inner in self.addresses:
            return True
        return self.local and (inner.is_loopback or inner.is_unspecified or inner in own_addresses)


@dataclass
class EgressPolicy:
    purpose: Purpose
    schemes: frozenset[str]
    allow: AllowList
    setting: str
    """The setting an operator changes to open an internal address (named in refusals)."""
    protected: tuple[Protected, ...] = ()
    own_addresses: frozenset[IPAddress] = frozenset()
    vouched: dict[IPAddress, float] = field(default_factory=dict)
    """Addresses an allow-listed host name resolved to, until when (the socket factory sees no names)."""

    def _refuse(self, target: str, why: str) -> EgressRefused:
        return EgressRefused(f"{_VERBS[self.purpose]} {target}: {why}")

    def check_url(self, url: Url) -> None:
        """Refuse a bad scheme, a protected host:port and internal literal IP hosts. Host names are checked on
        the addresses they resolve to (`check_address`)."""
        if url.scheme not in self.schemes:
            raise EgressRefused(
                f"URL scheme {url.scheme!r} is not allowed here (allowed: {', '.join(sorted(self.schemes))})"
            )
        for endpoint in self.protected:
            if url.host == endpoint.host and url.effective_port == endpoint.port:
                raise self._refuse(url.netloc, f"that is {endpoint.what} (never allowed)")
        if url.ip is not None:
            self.check_address(url.ip, url.effective_port, url.host)

    def check_address(self, addr: IPAddress, port: int, host: str) -> None:
        """Refuse a connection to `addr:port` (reached through the name `host`)."""
        shown = host if host == str(addr) else f"{host} ({addr})"
        for endpoint in self.protected:
            if endpoint.hit(addr, port, self.own_addresses):
                raise self._refuse(f"{shown} port {port}", f"that is {endpoint.what} (never allowed)")
        never = never_reason(addr)
        if never is not None:
            raise self._refuse(shown, f"it is {never} (never allowed)")
        if self.allow.allows_address(addr) or self._is_vouched(addr):
            return
        reason = internal_reason(addr)
        if reason is not None:
            raise self._refuse(shown, f"it is {reason} (add it to {self.setting} to allow it)")

    def check_resolved(self, host: str, port: int, addresses: Iterable[IPAddress]) -> None:
        """What DNS returned for `host`: an allow-listed name vouches for its addresses (still never for the
        protected and never-allowed ones); otherwise every address is checked."""
        found = list(addresses)
        if self.allow.allows_host(host):
            until = time.monotonic() + VOUCH_SECONDS
            for addr in found:
                self.vouched[addr] = until
        for addr in found:
            self.check_address(addr, port, host)

    def _is_vouched(self, addr: IPAddress) -> bool:
        until = self.vouched.get(addr)
        if until is None:
            return False
        if until < time.monotonic():
            del self.vouched[addr]
            return False
        return True
