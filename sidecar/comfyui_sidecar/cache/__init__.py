"""The sidecar's model and media cache: downloads URL inputs and models once, LRU-bounded, through the egress
policy. `POST /download` (`cache.routes`) and the manifest (`cache.manifest`) are wired by the app."""

from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.cache.store import Downloaded, ModelCache

__all__ = ["CacheSettings", "Downloaded", "ModelCache"]
