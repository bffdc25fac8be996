"""Per-request credentials (contract 4.4): which credential applies to a URL, and what it adds to a request.

Pure. `url_pattern` globs are anchored at both ends: `**` matches anything, `*` anything but `/`, `?` one
character.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Sequence
from functools import lru_cache

from comfyui_sidecar.egress.client import NO_AUTH, RequestAuth
from comfyui_sidecar.egress.urls import Url
from comfyui_sidecar.fetching import (
    BasicAuth,
    BearerAuth,
    Credential,
    DownloadAuth,
    HeaderAuth,
    QueryAuth,
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
    """The auth of the first credential whose `url_pattern` matches `url` (as written), or None."""
    for cred in credentials:
        if glob_regex(cred.url_pattern).match(url):
            return cred.auth
    return None


def credential_of_type(
    url: Url, credentials: Sequence[Credential], usable: Callable[[DownloadAuth], bool]
) -> DownloadAuth | None:
    """The first matching credential when its type is one the source can use, else None."""
    auth = match_credential(url.text, credentials)
    return auth if auth is not None and usable(auth) else None


def auth_fingerprint(auth: DownloadAuth | None) -> str:
    """A stable, non-reversible id of an auth (to tell whether two requests used the same credential)."""
    if auth is None:
        return ""
    return hashlib.sha256(auth.model_dump_json().encode()).hexdigest()


def request_auth(
    auth: DownloadAuth | None, *, url: Url, global_header: tuple[str, str] | None = None
) -> RequestAuth:
    """Auth precedence as upstream: per-request auth, then `user:pass@` in the URL, then the global header.
    The egress client sends it to the URL's origin only."""
    if isinstance(auth, BearerAuth):
        return RequestAuth(headers={"Authorization": f"Bearer {auth.token}"})
    if isinstance(auth, BasicAuth):
        return RequestAuth(headers={"Authorization": basic(auth.username, auth.password)})
    if isinstance(auth, HeaderAuth):
        return RequestAuth(headers={auth.header_name: auth.header_value})
    if isinstance(auth, QueryAuth):
        return RequestAuth(query=((auth.query_param, auth.query_value),))
    if auth is not None:
        return NO_AUTH  # a credential of another source's kind (s3) adds nothing to an HTTP request
    if url.has_userinfo:
        return RequestAuth(headers={"Authorization": basic(url.username or "", url.password or "")})
    if global_header is not None:
        return RequestAuth(headers={global_header[0]: global_header[1]})
    return NO_AUTH


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"
