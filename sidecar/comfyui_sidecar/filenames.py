"""File names from untrusted places (URLs, Content-Disposition, outputs): safe basenames and the extension
rules of contract 4.2. Pure functions, no I/O, no project imports."""

from __future__ import annotations

import base64
import hashlib
import posixpath
import re
from email.message import Message
from urllib.parse import unquote, urlsplit

HASH_LENGTH = 32
MAX_FINAL_URL_EXTENSION = 15
MAX_NAME = 200

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


def clean_extension(ext: str) -> str:
    return ext if _EXTENSION.match(ext) else ""


def safe_basename(name: str) -> str:
    """Reduce an untrusted file name to a harmless basename, or "" when nothing usable is left.

    Directory parts (both separators) are dropped, control and shell-unfriendly characters replaced, leading
    dots removed (no hidden files, no `..`), and the length bounded.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_NAME_CHARS.sub("_", base).strip(" ")
    base = base.lstrip(".")
    if len(base) > MAX_NAME:
        stem, ext = posixpath.splitext(base)
        base = stem[: MAX_NAME - len(ext)] + ext
    return base


def path_extension(url: str) -> str:
    """Extension of the URL's path (query and fragment ignored), e.g. `.safetensors`, or ""."""
    path = unquote(urlsplit(url).path)
    return clean_extension(posixpath.splitext(posixpath.basename(path))[1])


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
    return MIME_EXTENSIONS.get(content_type.split(";", 1)[0].strip().lower(), "")


def infer_extension(
    url: str, *, content_disposition: str | None, final_url: str | None, content_type: str | None
) -> str:
    """The extension rules of contract 4.2: URL path, then Content-Disposition, final URL, MIME type."""
    ext = path_extension(url)
    if ext:
        return ext
    name = disposition_filename(content_disposition)
    if name:
        ext = clean_extension(posixpath.splitext(name)[1])
        if ext:
            return ext
    if final_url:
        ext = path_extension(final_url)
        if ext and len(ext) <= MAX_FINAL_URL_EXTENSION:
            return ext
    return mime_extension(content_type)


def url_hash(url: str) -> str:
    """`base64url(sha256(url))[:32]`: the cache key of a URL, byte-compatible with comfyui-api (the cache
    names a URL's blob `<url_hash><extension>`, `cache.naming`)."""
    digest = hashlib.sha256(url.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:HASH_LENGTH]
