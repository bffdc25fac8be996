"""Leader election on a coordination.k8s.io Lease, so two operator replicas never act at the same time.

The standby replica polls the Lease; the leader renews it every third of its duration. A leader that can not
renew before the Lease expires stops the operator (the process exits and Kubernetes restarts it as a standby).
`decide` is pure and unit-tested; `LeaderElector` does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from comfyui_operator.kube import Kube, KubeError

Decision = Literal["create", "acquire", "renew", "wait"]
logger = logging.getLogger(__name__)
# While the API server keeps failing, a warning is repeated this often (the first failure is logged at once).
FAILURE_REMINDER = timedelta(minutes=5)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(moment: datetime) -> str:
    """MicroTime as the API server expects it (RFC 3339 with microseconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decide(lease: Mapping[str, Any] | None, identity: str, now: datetime) -> Decision:
    """What to do with the Lease: create it, take it over (expired or free), renew ours, or wait."""
    if lease is None:
        return "create"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if holder == identity:
        return "renew"
    renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or 0)
    if not holder or renewed is None or renewed + timedelta(seconds=duration) < now:
        return "acquire"
    return "wait"


def lease_body(
    namespace: str,
    name: str,
    identity: str,
    *,
    duration: int,
    now: datetime,
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The Lease to write for `decision` create/acquire/renew."""
    old_spec = dict((previous or {}).get("spec") or {})
    taking_over = old_spec.get("holderIdentity") != identity
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if previous is not None:
        metadata["resourceVersion"] = previous["metadata"]["resourceVersion"]
    transitions = int(old_spec.get("leaseTransitions") or 0) + (
        1 if previous is not None and taking_over else 0
    )
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": duration,
            "acquireTime": format_time(now) if taking_over else old_spec.get("acquireTime", format_time(now)),
            "renewTime": format_time(now),
            "leaseTransitions": transitions,
        },
    }


def released(lease: Mapping[str, Any]) -> dict[str, Any]:
    """The Lease without a holder (same resourceVersion, so a concurrent change makes the write fail)."""
    spec = {key: value for key, value in (lease.get("spec") or {}).items() if key != "holderIdentity"}
    return {**lease, "spec": spec}


@dataclass
class LeaderElector:
    kube: Kube
    namespace: str
    name: str
    identity: str
    duration_seconds: int
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    lost: bool = False
    other_holder: str | None = None  # who held the Lease at the last attempt that found it taken
    failing_since: datetime | None = None  # the API server has failed every attempt since then
    _reported: datetime | None = None

    @property
    def retry_seconds(self) -> float:
        return max(1.0, self.duration_seconds / 3)

    async def try_acquire(self) -> bool:
        """One attempt to become (or stay) the leader. Conflicts and API errors count as 'not leader'."""
        try:
            lease = await self.kube.get("Lease", self.namespace, self.name)
            now = self.clock()
            decision = decide(lease, self.identity, now)
            if decision == "wait":
                self.other_holder = str((lease or {}).get("spec", {}).get("holderIdentity"))
                self._answered()
                return False
            body = lease_body(
                self.namespace,
                self.name,
                self.identity,
                duration=self.duration_seconds,
                now=now,
                previous=lease,
            )
            if decision == "create":
                await self.kube.create(body)
            else:
                await self.kube.replace(body)
        except KubeError as exc:
            self._failed(exc)
            return False
        self._answered()
        return True

    def _failed(self, exc: KubeError) -> None:
        """Log an API failure once when it starts, then as a reminder every FAILURE_REMINDER (not on every
        attempt); a conflict is another replica writing the Lease at the same moment, nothing to report."""
        if exc.status == 409:
            logger.debug("lease %s/%s changed meanwhile: %s", self.namespace, self.name, exc)
            return
        now = self.clock()
        if self.failing_since is None:
            self.failing_since = self._reported = now
            logger.warning(
                "lease %s/%s: the API server failed (%s); retrying every %.0f s",
                self.namespace,
                self.name,
                exc,
                self.retry_seconds,
            )
        elif self._reported is not None and now - self._reported >= FAILURE_REMINDER:
            self._reported = now
            logger.warning(
                "lease %s/%s: the API server has failed for %.0f s (%s)",
                self.namespace,
                self.name,
                (now - self.failing_since).total_seconds(),
                exc,
            )
        else:
            logger.debug("lease %s/%s: the API server failed again: %s", self.namespace, self.name, exc)

    def _answered(self) -> None:
        if self.failing_since is not None:
            seconds = (self.clock() - self.failing_since).total_seconds()
            logger.info(
                "lease %s/%s: the API server answers again after %.0f s", self.namespace, self.name, seconds
            )
            self.failing_since = self._reported = None

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over at once (errors are only logged)."""
        try:
            lease = await self.kube.get("Lease", self.namespace, self.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            await self.kube.replace(released(lease))
            logger.info("released the lease %s/%s", self.namespace, self.name)
        except KubeError as exc:
            logger.warning("could not release the lease %s/%s: %s", self.namespace, self.name, exc)

    async def wait_until_leader(self, stop: asyncio.Event) -> bool:
        """Poll until this replica leads (True) or `stop` is set (False)."""
        while not stop.is_set():
            if await self.try_acquire():
                logger.info("became leader as %s", self.identity)
                return True
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.retry_seconds)
            except TimeoutError:
                continue
        return False

    async def keep_leading(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set; set `stop` when the Lease is lost: another replica holds it, or it could
        not be renewed before it expired (a renewal that hangs is abandoned at that moment)."""
        expires = self.clock() + timedelta(seconds=self.duration_seconds)
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.retry_seconds)
                return
            except TimeoutError:
                pass
            attempt = self.clock()
            remaining = (expires - attempt).total_seconds()
            self.other_holder = None
            try:
                renewed = remaining > 0 and await asyncio.wait_for(self.try_acquire(), timeout=remaining)
            except TimeoutError:
                renewed = False
            if renewed:
                expires = attempt + timedelta(seconds=self.duration_seconds)
            elif self.other_holder is not None or self.clock() >= expires:
                holder = f"now held by {self.other_holder}" if self.other_holder else "expired"
                logger.error("lost the lease %s/%s (%s); stopping", self.namespace, self.name, holder)
                self.lost = True
                stop.set()
                return
