"""Prometheus metrics of the sidecar (own registry per app; bounded label sets only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from comfyui_sidecar.models import VERSION

ROUTES = frozenset(
    {
        "/health",
        "/ready",
        "/models",
        "/prompt",
        "/interrupt",
        "/docs",
        "/docs/json",
        "/docs/yaml",
        "/metrics",
        "/download",
        "/prompt/{id}",
    }
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "comfyui_api_requests",
            "HTTP requests by route and status code",
            ["route", "code"],
            registry=self.registry,
        )
        self.prompt_duration = Histogram(
            "comfyui_api_prompt_duration_seconds",
            "Time from request to delivered result, by outcome",
            ["outcome"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
        )
        self.queue_depth = Gauge(
            "comfyui_api_queue_depth",
            "Prompts running or pending in ComfyUI (the autoscaling signal)",
            registry=self.registry,
        )
        self.inflight = Gauge(
            "comfyui_api_inflight_prompts",
            "Prompts accepted by the sidecar and not yet finished",
            registry=self.registry,
        )
        self.webhooks = Counter(
            "comfyui_api_webhook_deliveries",
            "Webhook deliveries by final outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.system_webhooks_dropped = Counter(
            "comfyui_api_system_webhooks_dropped",
            "System webhook events dropped because the delivery queue was full",
            registry=self.registry,
        )
        self.restarts = Counter(
            "comfyui_api_comfy_restarts",
            "ComfyUI restarts done by the sidecar (supervise mode)",
            registry=self.registry,
        )
        self.comfy_connected = Gauge(
            "comfyui_api_comfy_connected", "1 while the websocket to ComfyUI is open", registry=self.registry
        )
        self.ready = Gauge("comfyui_api_ready", "1 while /ready answers 200", registry=self.registry)
        self.jobs = Gauge(
            "comfyui_api_jobs",
            "Jobs of this pod (comfyui-api prompts and v2 jobs) by state, kept until their retention ends",
            ["state"],
            registry=self.registry,
        )
        self.event_streams = Gauge(
            "comfyui_api_event_streams", "Open /api/v2 job event streams", registry=self.registry
        )
        self.asset_bytes = Gauge(
            "comfyui_api_asset_bytes",
            "Bytes held for v2: uploaded assets (upload) and kept job outputs (output)",
            ["kind"],
            registry=self.registry,
        )
        self.forwarded = Counter(
            "comfyui_api_forwarded_requests",
            "Requests this pod passed to the peer that owns the job or asset, by result",
            ["result"],
            registry=self.registry,
        )
        self.build_info = Gauge(
            "comfyui_api_build_info", "Contract version served", ["version"], registry=self.registry
        )
        self.build_info.labels(version=VERSION).set(1)

    def route_label(self, path: str, canonical: str | None = None) -> str:
        """A bounded label: the known paths, the matched route pattern of /api/v2 and /prompt/{id}."""
        if path in ROUTES:
            return path
        if canonical is not None and (canonical in ROUTES or canonical.startswith(("/api/v2", "/internal/"))):
            return canonical
        if path.startswith("/docs"):
            return "/docs"
        return "other"
