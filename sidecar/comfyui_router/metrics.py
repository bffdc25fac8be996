"""Prometheus metrics of the router (own registry; bounded label sets only)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

ROUTE_FAMILIES = ("prompt", "v2_submit", "v2_job", "v2_other", "other", "router")


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "comfyui_router_requests_total",
            "Requests answered, by route family and status code.",
            ["family", "code"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "comfyui_router_decisions_total",
            "Jobs sent to a replica, by why it was chosen: affinity (it holds the job's models), "
            "least_loaded, round_robin.",
            ["reason"],
            registry=self.registry,
        )
        self.held = Gauge(
            "comfyui_router_held_jobs", "v2 jobs held until a replica is ready.", registry=self.registry
        )
        self.waiting = Gauge(
            "comfyui_router_waiting_requests",
            "comfyui-api and other requests waiting for a ready replica.",
            registry=self.registry,
        )
        self.refused = Counter(
            "comfyui_router_held_refused_total",
            "Jobs refused with 429 because the bound on held jobs was reached.",
            registry=self.registry,
        )
        self.replicas = Gauge(
            "comfyui_router_replicas",
            "Replicas known to this router, by whether they take jobs now.",
            ["state"],
            registry=self.registry,
        )
        self.lost = Counter(
            "comfyui_router_replicas_lost_total",
            "Replicas found gone (left discovery or stopped answering).",
            registry=self.registry,
        )
        self.failed = Counter(
            "comfyui_router_forward_failures_total",
            "Requests a replica did not answer: unreachable (sent elsewhere), gone or broken (502).",
            ["reason"],
            registry=self.registry,
        )
