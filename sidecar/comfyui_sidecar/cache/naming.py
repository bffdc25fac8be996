"""Cache file names (contract 4.2) and link names. Pure functions, no I/O.

The cache name of a URL is `base64url(sha256(url))[:32]` followed by the extension its source found
(`filenames.infer_extension` for HTTP).
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

from comfyui_sidecar.filenames import HASH_LENGTH, clean_extension, safe_basename, url_hash

__all__ = ["HASH_LENGTH", "cache_name", "link_name", "url_basename", "url_hash"]


def cache_name(url: str, extension: str) -> str:
    """The blob file name of `url`: `<hash32><ext>`."""
    return url_hash(url) + clean_extension(extension)


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
