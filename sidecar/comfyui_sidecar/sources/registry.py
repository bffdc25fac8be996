"""The registry of download sources, in the order they claim URLs: S3, Hugging Face, then plain HTTP (last).

Adding a source is one new module with a class that follows `base.Source`, plus one line in `SOURCE_TYPES` and
`build_registry`. Every scheme list (rewriting, POST /download, the manifest) comes from `SCHEMES`.
"""

from __future__ import annotations

from collections.abc import Sequence

from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.egress.urls import InvalidUrl, Url, parse_url
from comfyui_sidecar.sources.base import Reference, Source
from comfyui_sidecar.sources.hf import HfSource
from comfyui_sidecar.sources.http import HttpSource
from comfyui_sidecar.sources.s3 import S3Source
from comfyui_sidecar.sources.s3_client import S3Clients
from comfyui_sidecar.sources.settings import SourceSettings

SOURCE_TYPES = (S3Source, HfSource, HttpSource)
SCHEMES: frozenset[str] = frozenset().union(*(kind.schemes for kind in SOURCE_TYPES))


def supported_schemes() -> str:
    return ", ".join(sorted(SCHEMES))


class UnsupportedScheme(InvalidUrl):
    """A URL no source serves (`ftp://`, `file://`, ...)."""


def check_scheme(url: Url) -> None:
    if url.scheme not in SCHEMES:
        raise UnsupportedScheme(
            f"No storage provider found for URL: {url.redacted} (supported schemes: {supported_schemes()})"
        )


class SourceRegistry:
    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = tuple(sources)

    def reference(self, url: Url | str) -> Reference:
        """The typed reference of `url` (parsed here only if it comes as text). Raises InvalidUrl."""
        parsed = url if isinstance(url, Url) else parse_url(url)
        check_scheme(parsed)
        for source in self.sources:
            ref = source.claim(parsed)
            if ref is not None:
                return ref
        raise UnsupportedScheme(f"No storage provider found for URL: {parsed.redacted}")

    def source(self, ref: Reference) -> Source:
        return next(s for s in self.sources if s.name == ref.source)


def build_registry(
    settings: SourceSettings, egress: Egress, s3: S3Clients, *, wait_seconds: float
) -> SourceRegistry:
    """The sources of one sidecar, downloading through `egress.download`."""
    return SourceRegistry(
        [
            S3Source(s3),
            HfSource(
                egress.download,
                endpoint=settings.hf_endpoint,
                token=settings.hf_token_value,
                wait_seconds=wait_seconds,
            ),
            HttpSource(egress.download, global_header=settings.global_auth_header),
        ]
    )
