"""The sidecar's model and media cache: downloads URL inputs and models once, LRU-bounded, SSRF-guarded."""

from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.cache.store import Downloaded, ModelCache

__all__ = ["CacheSettings", "Downloaded", "ModelCache"]
