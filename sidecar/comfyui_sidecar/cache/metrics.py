"""Prometheus metrics of the cache (default registry; names follow operator-conventions 5.2)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CACHE_BYTES = Gauge("comfyui_api_model_cache_bytes", "Bytes of downloaded files held in the sidecar cache.")
EVICTIONS = Counter("comfyui_api_model_cache_evictions", "Cache entries evicted to stay within the budget.")
REQUESTS = Counter(
    "comfyui_api_model_cache_requests", "URL lookups by the cache, by result (hit, miss, error).", ["result"]
)
DOWNLOAD_SECONDS = Histogram(
    "comfyui_api_model_download_duration_seconds",
    "Duration of completed downloads into the cache.",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
)
