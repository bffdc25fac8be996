"""The one URL parser of the sidecar: text in, a typed `Url` out, or `InvalidUrl` with a message a client can
act on. Pure.

Every URL the sidecar reaches out to (prompt inputs and models, `/download`, the manifest, webhooks, upload
targets, redirects) is parsed here once; everything else reads the typed fields. What is refused: unpaired
surrogates and control characters, a missing host, ports outside 1-65535, host name labels over 63 characters
or names over 253, characters that no host name has.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 16_384
MAX_LABEL = 63
MAX_HOST = 253
HTTP_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443, "s3": 443}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")


class InvalidUrl(ValueError):
    """The text is not a URL the sidecar can use; `message` says why (no credentials in it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_ip_literal(host: str) -> IPAddress | None:
    """An IP address in any spelling a resolver accepts: dotted, IPv6 (with or without brackets and zone), or
    the inet_aton forms `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`."""
    text = host.strip().strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Url:
    """A parsed URL. `text` is exactly what the caller sent (the cache key); the other fields are normalised:
    scheme and host lower case, the host in ASCII (IDNA), IPv6 hosts without brackets."""

    text: str
    scheme: str
    host: str
    port: int | None
    path: str
    query: str
    fragment: str
    username: str | None
    password: str | None
    ip: IPAddress | None

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS.get(self.scheme, 0)

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port): credentials given for one origin never go to another."""
        return self.scheme, self.host, self.effective_port

    @property
    def netloc(self) -> str:
        """host[:port] without userinfo."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def has_userinfo(self) -> bool:
        return self.username is not None or self.password is not None

    @property
    def public(self) -> str:
        """The URL without `user:password@`: safe to store and to echo."""
        if not self.has_userinfo:
            return self.text
        return urlunsplit((self.scheme, self.netloc, self.path, self.query, self.fragment))

    @property
    def target(self) -> str:
        """What goes on the wire: normalised host, no userinfo, no fragment."""
        return urlunsplit((self.scheme, self.netloc, self.path, self.query, ""))

    @property
    def redacted(self) -> str:
        """The URL for logs and error messages: no userinfo, no query string (queries often carry tokens)."""
        return urlunsplit((self.scheme, self.netloc, self.path, "…" if self.query else "", ""))

    def join(self, location: str) -> Url:
        """A redirect target (`Location`, absolute or relative to this URL), parsed."""
        try:
            return parse_url(urljoin(self.public, location))
        except (ValueError, InvalidUrl):
            raise InvalidUrl(f"Invalid URL in a redirect from {self.redacted}") from None


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise InvalidUrl("Invalid URL: not a string")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidUrl(f"Invalid URL: longer than {MAX_URL_LENGTH} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUrl("Invalid URL: it contains an unpaired surrogate (not valid Unicode)") from None
    if _CONTROL.search(text):
        raise InvalidUrl("Invalid URL: it contains control characters")
    return text


def normalise_host(raw: str) -> str:
    """A DNS host name in ASCII, lower case; raises InvalidUrl for names DNS cannot carry."""
    name = raw.rstrip(".").lower()
    if not name:
        raise InvalidUrl("Invalid URL: the host is empty")
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        labels = name.split(".")
        if any(len(label) > MAX_LABEL for label in labels):
            raise InvalidUrl(
                f"Invalid URL: a host name label is longer than {MAX_LABEL} characters"
            ) from None
        raise InvalidUrl(f"Invalid URL: {raw!r} is not a valid host name") from None
    if len(ascii_name) > MAX_HOST:
        raise InvalidUrl(f"Invalid URL: the host name is longer than {MAX_HOST} characters")
    for label in ascii_name.split("."):
        if len(label) > MAX_LABEL:
            raise InvalidUrl(f"Invalid URL: a host name label is longer than {MAX_LABEL} characters")
        if not _LABEL.match(label):
            raise InvalidUrl(f"Invalid URL: {raw!r} is not a valid host name")
    return ascii_name


def parse_url(text: object) -> Url:
    """Parse `text` into a `Url` or raise `InvalidUrl`. Schemes are not judged here (see the source registry
    and the egress policy); a scheme and a host are required."""
    checked = _check_text(text)
    try:
        parts = urlsplit(checked)
        hostname = parts.hostname
    except ValueError as exc:
        raise InvalidUrl(f"Invalid URL: {exc}") from None
    if not parts.scheme or not parts.netloc or not hostname:
        raise InvalidUrl("Invalid URL: it needs a scheme and a host, like https://host/path")
    try:
        port = parts.port
    except ValueError:
        raise InvalidUrl("Invalid URL: the port must be a number from 1 to 65535") from None
    if port == 0:
        raise InvalidUrl("Invalid URL: the port must be a number from 1 to 65535")
    # what inet_aton reads as an address (`2130706433`, `0x7f.1`) is one: that is how it would be connected to
    ip = parse_ip_literal(hostname)
    if "[" in parts.netloc and ip is None:
        raise InvalidUrl(f"Invalid URL: {hostname!r} is not an IPv6 address")
    host = str(ip) if ip is not None else normalise_host(hostname)
    return Url(
        text=checked,
        scheme=parts.scheme.lower(),
        host=host,
        port=port,
        path=parts.path,
        query=parts.query,
        fragment=parts.fragment,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        ip=ip,
    )


def scheme_of(text: str) -> str | None:
    """The scheme of something written like a URL (`name://…`), lower case, or None."""
    head, sep, _ = text.partition("://")
    if not sep or not head or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head):
        return None
    return head.lower()


def with_query(url: Url, extra: tuple[tuple[str, str], ...]) -> str:
    """The request target (`Url.target`) with query parameters set, replacing any of the same name."""
    if not extra:
        return url.target
    names = {k for k, _ in extra}
    pairs = [(k, v) for k, v in parse_qsl(url.query, keep_blank_values=True) if k not in names]
    pairs.extend(extra)
    return urlunsplit((url.scheme, url.netloc, url.path, urlencode(pairs), ""))
