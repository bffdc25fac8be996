"""Per-request credentials (contract 4.4): `url_pattern` globs and how an auth becomes request headers.

Pure functions. Globs are anchored at both ends: `**` matches anything, `*` anything but `/`,
`?` one character.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from comfyui_sidecar.fetching import (
    BasicAuth,
    BearerAuth,
    Credential,
    DownloadAuth,
    HeaderAuth,
    QueryAuth,
    S3Auth,
)


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """The anchored regular expression of a `url_pattern` glob."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append(".")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$", re.DOTALL)


def match_credential(url: str, credentials: Sequence[Credential]) -> DownloadAuth | None:
    """The auth of the first credential whose `url_pattern` matches `url`, or None."""
    for cred in credentials:
        if glob_regex(cred.url_pattern).match(url):
            return cred.auth
    return None


@dataclass(frozen=True)
class RequestAuth:
    """What an auth adds to a request: headers and query parameters. Never logged."""

    headers: dict[str, str] = field(default_factory=dict)
    query: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.headers and not self.query


def auth_fingerprint(auth: DownloadAuth | None) -> str:
    """A stable, non-reversible id of an auth (to tell whether two requests used the same credential)."""
    if auth is None:
        return ""
    return hashlib.sha256(auth.model_dump_json().encode()).hexdigest()


def request_auth(
    auth: DownloadAuth | None,
    *,
    url: str,
    global_header: tuple[str, str] | None = None,
) -> RequestAuth:
    """Auth precedence as upstream: per-request auth, then `user:pass@` in the URL, then the global header."""
    if isinstance(auth, BearerAuth):
        return RequestAuth(headers={"Authorization": f"Bearer {auth.token}"})
    if isinstance(auth, BasicAuth):
        return RequestAuth(headers={"Authorization": _basic(auth.username, auth.password)})
    if isinstance(auth, HeaderAuth):
        return RequestAuth(headers={auth.header_name: auth.header_value})
    if isinstance(auth, QueryAuth):
        return RequestAuth(query=((auth.query_param, auth.query_value),))
    if isinstance(auth, S3Auth):
        return RequestAuth()
    parts = urlsplit(url)
    if parts.username is not None:
        return RequestAuth(
            headers={"Authorization": _basic(unquote(parts.username), unquote(parts.password or ""))}
        )
    if global_header is not None:
        return RequestAuth(headers={global_header[0]: global_header[1]})
    return RequestAuth()


def _basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def with_query(url: str, query: Sequence[tuple[str, str]]) -> str:
    """`url` with the given query parameters set (replacing any of the same name)."""
    if not query:
        return url
    parts = urlsplit(url)
    names = {k for k, _ in query}
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in names]
    pairs.extend(query)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(pairs), parts.fragment))
