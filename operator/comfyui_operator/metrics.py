"""Prometheus metrics of the operator (listed in docs/operator.md); the only user of prometheus_client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from comfyui_operator import __version__

RECONCILE_TOTAL = Counter(
    "comfyui_operator_reconcile",
    "Reconciliations by result (success, invalid_spec, missing_reference, apply_failed, error).",
    ["result"],
)
RECONCILE_DURATION = Histogram(
    "comfyui_operator_reconcile_duration_seconds",
    "Duration of one reconciliation (apply of all owned objects plus status refresh).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STATUS_WRITES_TOTAL = Counter(
    "comfyui_operator_status_writes", "Status subresource writes (only made when the status changed)."
)
INSTANCES = Gauge(
    "comfyui_operator_instances",
    "ComfyUIInstances known to the operator, by their Ready condition.",
    ["ready"],
)
HEALTH = Gauge(
    "comfyui_operator_health_status",
    "Operator health, the worst over all instances' last reconcile: 0 healthy, 1 warning (an unexpected "
    "error), 2 critical (API unreachable, 401 or 403).",
)
BUILD_INFO = Gauge("comfyui_operator_build_info", "Build information.", ["version"])

HEALTHY, WARNING, CRITICAL = 0, 1, 2
_READY_STATES = ("True", "False", "Unknown")


class InstanceTracker:
    """Remembers each instance's Ready state and the health of its last reconcile, and keeps the
    `comfyui_operator_instances` and `comfyui_operator_health_status` gauges in sync. Health is the worst
    over all instances, so one failing instance is not hidden by another's success."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}
        self._health: dict[str, int] = {}
        self._publish()

    def set(self, key: str, ready: str) -> None:
        self._states[key] = ready if ready in _READY_STATES else "Unknown"
        self._publish()

    def record(self, key: str, result: str, *, critical: bool = False) -> None:
        """Count one reconciliation of `key`; an unexpected error makes its health 1, an unusable API
        connection 2, anything else (problems shown in the instance's status included) 0."""
        RECONCILE_TOTAL.labels(result=result).inc()
        self._health[key] = CRITICAL if critical else WARNING if result == "error" else HEALTHY
        self._publish()

    def forget(self, key: str) -> None:
        self._states.pop(key, None)
        self._health.pop(key, None)
        self._publish()

    def counts(self) -> dict[str, int]:
        return {state: sum(1 for value in self._states.values() if value == state) for state in _READY_STATES}

    def health(self) -> int:
        return max(self._health.values(), default=HEALTHY)

    def unhealthy(self) -> dict[str, int]:
        """Instances whose last reconcile was not healthy, with their level."""
        return {key: level for key, level in sorted(self._health.items()) if level != HEALTHY}

    def _publish(self) -> None:
        for state, count in self.counts().items():
            INSTANCES.labels(ready=state).set(count)
        HEALTH.set(self.health())


@contextmanager
def timed_reconcile() -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        RECONCILE_DURATION.observe(time.monotonic() - start)


def start_metrics_server(port: int) -> None:
    """Serve /metrics on all interfaces (0 disables)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]
    BUILD_INFO.labels(version=__version__).set(1)
    if port:
        start_http_server(port)
