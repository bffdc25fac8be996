"""Where clients reach this instance: host-relative job links and absolute content URLs (pure).

`urls.self/events/cancel` are host-relative (`<prefix>/api/v2/jobs/<id>`), so the SDK resolves them against
the origin it called and keeps its credential and scheme behind any ingress. `Output.url` and `Asset.url` must
be absolute: their origin comes from PUBLIC_BASE_URL, else from trusted X-Forwarded-Proto/-Host/-Prefix, else
from the request itself. A request forwarded by a peer carries the first peer's view in X-Forwarded-* plus the
hop header, and is believed (it only shapes links in the answer to that same request).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

API = "/api/v2"
HOP_HEADER = "X-Comfy-Peer-Hop"
"""Set on calls between peers: answer locally, never forward again."""
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*$")


@dataclass(frozen=True)
class External:
    """The client-facing origin (scheme://host[:port]) and path prefix ('' or '/a/b') of /api/v2."""

    origin: str
    prefix: str

    def job_urls(self, job_id: str) -> dict[str, str]:
        base = f"{self.prefix}{API}/jobs/{job_id}"
        return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}

    def content_url(self, asset_id: str) -> str:
        return f"{self.origin}{self.prefix}{API}/assets/{asset_id}/content"

    def forward_headers(self) -> dict[str, str]:
        """What a peer needs to build the same links (sent with the hop header)."""
        parts = urlsplit(self.origin)
        return {
            "X-Forwarded-Proto": parts.scheme,
            "X-Forwarded-Host": parts.netloc,
            "X-Forwarded-Prefix": self.prefix,
        }


def _first(headers: Mapping[str, str], name: str) -> str:
    return headers.get(name, "").split(",")[0].strip()


def external(
    headers: Mapping[str, str],
    scheme: str,
    *,
    public_base_url: str | None,
    trust_forwarded: bool,
) -> External:
    """The External of one request (headers: the request's, case-insensitive mapping)."""
    if public_base_url:
        parts = urlsplit(public_base_url)
        return External(f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/"))
    host = headers.get("Host", "")
    prefix = ""
    if trust_forwarded or HOP_HEADER in headers:
        proto = _first(headers, "X-Forwarded-Proto").lower()
        scheme = proto if proto in ("http", "https") else scheme
        host = _first(headers, "X-Forwarded-Host") or host
        prefix = _first(headers, "X-Forwarded-Prefix").rstrip("/")
        if prefix and not prefix.startswith("/"):
            prefix = "/" + prefix
        if not _PREFIX.match(prefix):
            prefix = ""
    if not _HOST.match(host):
        host = "localhost"
    return External(f"{scheme}://{host}", prefix)
