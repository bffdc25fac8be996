"""Prometheus metrics of the sidecar (own registry per app; bounded label sets only)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

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

EXECUTION_RESULTS = ("success", "error", "interrupted")
"""How ComfyUI ends a prompt (its websocket's execution_success / execution_error / execution_interrupted)."""


class BusyTime(Collector):
    """`comfyui_api_comfy_busy_seconds_total`: wall time during which ComfyUI had work, i.e. the websocket to
    it was open and its last `status` message said `queue_remaining > 0` (a prompt running or waiting). Its
    rate is the busy fraction of the pod's GPU as ComfyUI uses it (not a hardware utilisation reading). With
    several local ComfyUIs (`source` = their index) their seconds add up: the rate is the number of busy
    GPUs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._done = 0.0
        self._since: dict[int, float] = {}
        self._depth: dict[int, int] = {}
        self._connected: dict[int, bool] = {}

    def queue_depth(self, depth: int, source: int = 0) -> None:
        self._depth[source] = depth
        self._update(source)

    def connected(self, up: bool, source: int = 0) -> None:
        self._connected[source] = up
        self._update(source)

    def seconds(self) -> float:
        now = self._clock()
        return self._done + sum(now - since for since in self._since.values())

    def _update(self, source: int) -> None:
        busy = self._connected.get(source, False) and self._depth.get(source, 0) > 0
        since = self._since.get(source)
        if busy and since is None:
            self._since[source] = self._clock()
        elif not busy and since is not None:
            self._done += self._clock() - since
            del self._since[source]

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "comfyui_api_comfy_busy_seconds",
            "Seconds ComfyUI had a prompt running or queued (websocket open, queue_remaining > 0)",
            value=self.seconds(),
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
        self.busy = BusyTime()
        self.registry.register(self.busy)
        self._depths: dict[int, int] = {}
        self.executions = Counter(
            "comfyui_api_comfy_executions",
            "Prompts ComfyUI finished, by result, as its websocket reported them (any API that queued them)",
            ["result"],
            registry=self.registry,
        )
        for result in EXECUTION_RESULTS:  # every series exists from the start, so rate() and alerts see zeros
            self.executions.labels(result=result)
        self.model_loads = Counter(
            "comfyui_api_model_loads",
            "Model-loader nodes ComfyUI ran (not served from its execution cache), by node class",
            ["loader"],
            registry=self.registry,
        )

    def route_label(self, path: str, canonical: str | None = None) -> str:
        """A bounded label: the known paths, the matched route pattern of /api/v2 and /prompt/{id}."""
        if path in ROUTES:
            return path
        if canonical is not None and (canonical in ROUTES or canonical.startswith(("/api/v2", "/internal/"))):
            return canonical
        if path.startswith("/docs"):
            return "/docs"
        return "other"

    def queue_depth_changed(self, depth: int, source: int = 0) -> None:
        """ComfyUI `source` (a local index) reported its queue: the gauge shows the sum over all of them."""
        self._depths[source] = depth
        self.queue_depth.set(sum(self._depths.values()))
        self.busy.queue_depth(depth, source)
