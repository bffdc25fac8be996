"""The model manifest (contract 4.7): `models.before_start` downloaded before `/ready`, `after_start` in the
background. `apt`, `pip` and `custom_nodes` belong in the image and are ignored here (with a warning).

The app wires it (`ManifestPreload`); the cache does not import it. Manifest downloads are cache downloads,
so they go through the sources and the egress policy."""

from __future__ import annotations

import json
import logging
from pathlib import PurePosixPath

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.cache.store import ModelCache
from comfyui_sidecar.egress.urls import InvalidUrl, parse_url
from comfyui_sidecar.fetching import FetchError

log = logging.getLogger(__name__)


class ManifestModel(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str
    local_path: str


class ManifestModels(BaseModel):
    model_config = ConfigDict(extra="ignore")
    before_start: list[ManifestModel] = Field(default_factory=list)
    after_start: list[ManifestModel] = Field(default_factory=list)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    apt: list[str] = Field(default_factory=list)
    pip: list[str] = Field(default_factory=list)
    custom_nodes: list[str] = Field(default_factory=list)
    models: ManifestModels


class ManifestError(Exception):
    pass


def load_manifest(settings: CacheSettings) -> Manifest | None:
    """The manifest from MANIFEST_JSON (wins) or the MANIFEST file, or None when neither is set."""
    try:
        if settings.manifest_json:
            data = json.loads(settings.manifest_json)
        elif settings.manifest is not None:
            text = settings.manifest.read_text(encoding="utf-8")
            data = json.loads(text) if settings.manifest.suffix == ".json" else yaml.safe_load(text)
        else:
            return None
        return Manifest.model_validate(data)
    except (OSError, ValueError, yaml.YAMLError, ValidationError) as exc:
        raise ManifestError(f"invalid model manifest: {exc}") from None


def target_of(local_path: str) -> tuple[str, str]:
    """(model folder, file name) of a manifest `local_path` such as `/opt/ComfyUI/models/loras/x.safetensors`
    or `loras/x.safetensors`: the last directory is the folder."""
    path = PurePosixPath(local_path)
    if len(path.parts) < 2 or ".." in path.parts:
        raise ManifestError(f"manifest local_path must end in <model folder>/<file name>: {local_path!r}")
    return path.parent.name, path.name


async def run_manifest_phase(cache: ModelCache, manifest: Manifest, phase: str) -> list[str]:
    """Download one phase's models; returns the error messages (every item is attempted)."""
    items = manifest.models.before_start if phase == "before_start" else manifest.models.after_start
    errors: list[str] = []
    for item in items:
        try:
            folder, name = target_of(item.local_path)
            if not cache.is_model_folder(folder):
                raise ManifestError(f"unknown model folder {folder!r} in {item.local_path!r}")
            done = await cache.download(item.url, folder=folder, filename=name)
            log.info("manifest: %s -> %s/%s", _shown(item.url), folder, done.link_name)
        except (FetchError, ManifestError) as exc:
            message = exc.message if isinstance(exc, FetchError) else str(exc)
            log.error("manifest: %s failed: %s", _shown(item.url), message)
            errors.append(message)
    return errors


def _shown(url: str) -> str:
    try:
        return parse_url(url).redacted
    except InvalidUrl:
        return "<invalid URL>"


class ManifestPreload:
    """The manifest's downloads (the app's `Preloads`): `load` reads the manifest before the cache opens
    anything (an unreadable one raises ManifestError); `preload` downloads `before_start` (the app runs it in
    the background after the cache started and holds /ready until it returns), then `after_start` in the
    background. A failed item is logged and kept in `errors`; it does not stop the sidecar."""

    def __init__(self, cache: ModelCache, manifest: Manifest | None) -> None:
        self.cache = cache
        self.manifest = manifest
        self.errors: list[str] = []

    @classmethod
    def load(cls, cache: ModelCache, settings: CacheSettings) -> ManifestPreload:
        return cls(cache, load_manifest(settings))

    async def preload(self) -> None:
        manifest = self.manifest
        if manifest is None:
            return
        warn_unsupported(manifest)
        self.errors.extend(await run_manifest_phase(self.cache, manifest, "before_start"))

        async def after() -> None:
            self.errors.extend(await run_manifest_phase(self.cache, manifest, "after_start"))

        if manifest.models.after_start:
            self.cache.run_in_background(after())


def warn_unsupported(manifest: Manifest) -> None:
    for key in ("apt", "pip", "custom_nodes"):
        if getattr(manifest, key):
            log.warning("manifest: %r is ignored by the sidecar; install it in the image instead", key)
