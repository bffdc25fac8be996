"""Cache file names (contract 4.2) and safe link names. Pure functions, no I/O.

The cache name of a URL is `base64url(sha256(url))[:32]` followed by an extension taken, in order, from
the URL path, the `Content-Disposition` file name, the final (post-redirect) URL, or the MIME type.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import re
from email.message import Message
from urllib.parse import unquote, urlsplit, urlunsplit

HASH_LENGTH = 32
MAX_FINAL_URL_EXTENSION = 15
MAX_LINK_NAME = 200

# MIME type -> extension for responses whose URL and Content-Disposition give none.
MIME_EXTENSIONS: dict[str, str] = {
    "application/octet-stream": ".bin",
    "application/json": ".json",
    "application/x-yaml": ".yaml",
    "application/yaml": ".yaml",
    "application/zip": ".zip",
    "application/gzip": ".gz",
    "application/x-tar": ".tar",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-matroska": ".mkv",
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
}

_EXTENSION = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._ ()+=,@-]")


def url_hash(url: str) -> str:
    """`base64url(sha256(url))[:32]`: the cache key of a URL, byte-compatible with comfyui-api."""
    digest = hashlib.sha256(url.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:HASH_LENGTH]


def _clean_extension(ext: str) -> str:
    return ext if _EXTENSION.match(ext) else ""


def path_extension(url: str) -> str:
    """Extension of the URL's path (query and fragment ignored), e.g. `.safetensors`, or ""."""
    path = unquote(urlsplit(url).path)
    base = posixpath.basename(path)
    return _clean_extension(posixpath.splitext(base)[1])


def disposition_filename(header: str | None) -> str | None:
    """The file name in a `Content-Disposition` header (RFC 6266, `filename*` wins), reduced to a basename."""
    if not header:
        return None
    msg = Message()
    msg["content-disposition"] = header
    name = msg.get_filename()
    if not name:
        return None
    return safe_basename(name) or None


def mime_extension(content_type: str | None) -> str:
    if not content_type:
        return ""
    mime = content_type.split(";", 1)[0].strip().lower()
    return MIME_EXTENSIONS.get(mime, "")


def infer_extension(
    url: str, *, content_disposition: str | None, final_url: str | None, content_type: str | None
) -> str:
    """The extension rules of contract 4.2: URL path, then Content-Disposition, final URL, MIME type."""
    ext = path_extension(url)
    if ext:
        return ext
    name = disposition_filename(content_disposition)
    if name:
        ext = _clean_extension(posixpath.splitext(name)[1])
        if ext:
            return ext
    if final_url:
        ext = path_extension(final_url)
        if ext and len(ext) <= MAX_FINAL_URL_EXTENSION:
            return ext
    return mime_extension(content_type)


def cache_name(url: str, extension: str) -> str:
    """The blob file name of `url`: `<hash32><ext>`."""
    return url_hash(url) + _clean_extension(extension)


def safe_basename(name: str) -> str:
    """Reduce an untrusted file name to a harmless basename, or "" when nothing usable is left.

    Directory parts (both separators) are dropped, control and shell-unfriendly characters replaced, leading
    dots removed (no hidden files, no `..`), and the length bounded.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_NAME_CHARS.sub("_", base).strip(" ")
    base = base.lstrip(".")
    if len(base) > MAX_LINK_NAME:
        stem, ext = posixpath.splitext(base)
        base = stem[: MAX_LINK_NAME - len(ext)] + ext
    return base


def link_name(override: str | None, blob_name: str) -> str:
    """The name of the link a caller sees: the override (made safe, given the blob's extension when it has
    none) or the blob's own name."""
    if override:
        name = safe_basename(override)
        if name:
            if not posixpath.splitext(name)[1]:
                name += posixpath.splitext(blob_name)[1]
            return name
    return blob_name


def url_basename(url: str) -> str:
    """The basename of a URL's path (the default `filename` of POST /download)."""
    return safe_basename(unquote(urlsplit(url).path))


def strip_userinfo(url: str) -> str:
    """The URL without `user:password@`, safe to store and log."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_url(url: str) -> str:
    """The URL for logs and error messages: no userinfo and no query string (queries often carry tokens)."""
    parts = urlsplit(strip_userinfo(url))
    query = "…" if parts.query else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
