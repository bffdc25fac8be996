"""Leader election: the pure decision table and the elector against an in-memory Lease store."""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from comfyui_operator.kube import KubeError
from comfyui_operator.leader import LeaderElector, decide, format_time, lease_body

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def lease(holder: str | None, renewed_ago: float, duration: int = 15) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "leaseDurationSeconds": duration,
        "renewTime": format_time(NOW - timedelta(seconds=renewed_ago)),
    }
    if holder:
        spec["holderIdentity"] = holder
    return {"metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7"}, "spec": spec}


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (None, "create"),
        (lease("me", 1), "renew"),
        (lease("other", 1), "wait"),
        (lease("other", 14), "wait"),
        (lease("other", 16), "acquire"),
        (lease(None, 1), "acquire"),
        ({"metadata": {}, "spec": {"holderIdentity": "other"}}, "acquire"),
    ],
)
def test_decide(current: dict[str, Any] | None, expected: str) -> None:
    assert decide(current, "me", NOW) == expected


def test_lease_body_counts_transitions_and_keeps_resource_version() -> None:
    taken = lease_body("ns", "l", "me", duration=15, now=NOW, previous=lease("other", 30))
    assert taken["metadata"]["resourceVersion"] == "7"
    assert taken["spec"]["holderIdentity"] == "me"
    assert taken["spec"]["leaseTransitions"] == 1
    assert taken["spec"]["acquireTime"] == taken["spec"]["renewTime"] == "2026-01-01T12:00:00.000000Z"
    renewed = lease_body("ns", "l", "me", duration=15, now=NOW + timedelta(seconds=5), previous=taken)
    assert renewed["spec"]["leaseTransitions"] == 1
    assert renewed["spec"]["acquireTime"] == taken["spec"]["acquireTime"]
    created = lease_body("ns", "l", "me", duration=15, now=NOW, previous=None)
    assert "resourceVersion" not in created["metadata"]
    assert created["spec"]["leaseTransitions"] == 0


class LeaseStore:
    def __init__(self, on_failure: Any = None) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.fail = False
        self.on_failure = on_failure

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.fail:
            if self.on_failure:
                self.on_failure()
            raise KubeError(0, "connection refused")
        return copy.deepcopy(self.lease)

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise KubeError(409, "already exists")
        return await self._store(obj)

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.lease is not None
        if obj["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise KubeError(409, "conflict")
        return await self._store(obj)

    async def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(obj)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return self.lease


async def test_two_electors_one_leader() -> None:
    store = LeaseStore()
    clock = [NOW]
    first = LeaderElector(store, "ns", "l", "a", 15, clock=lambda: clock[0])  # type: ignore[arg-type]
    second = LeaderElector(store, "ns", "l", "b", 15, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert await first.try_acquire() is True
    assert await second.try_acquire() is False
    clock[0] += timedelta(seconds=5)
    assert await first.try_acquire() is True  # renew
    clock[0] += timedelta(seconds=30)  # the first stopped renewing
    assert await second.try_acquire() is True
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == "b"
    assert await first.try_acquire() is False


async def test_wait_until_leader_stops_on_flag() -> None:
    store = LeaseStore()
    store.lease = lease("other", 0, duration=3600)
    store.lease["spec"]["renewTime"] = format_time(datetime.now(UTC))
    elector = LeaderElector(store, "ns", "l", "me", 5)  # type: ignore[arg-type]
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)
    assert await asyncio.wait_for(elector.wait_until_leader(stop), timeout=5) is False


async def test_losing_the_lease_stops_the_operator() -> None:
    clock = [NOW]

    def advance() -> None:
        clock[0] += timedelta(seconds=2)

    store = LeaseStore(on_failure=advance)
    elector = LeaderElector(store, "ns", "l", "me", 3, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert await elector.try_acquire() is True
    store.fail = True  # the API server is gone: every renewal fails and (fake) time passes
    stop = asyncio.Event()
    await asyncio.wait_for(elector.keep_leading(stop), timeout=10)
    assert stop.is_set()
    assert elector.lost is True


async def test_release_lets_a_standby_take_over_at_once() -> None:
    store = LeaseStore()
    clock = [NOW]
    first = LeaderElector(store, "ns", "l", "a", 15, clock=lambda: clock[0])  # type: ignore[arg-type]
    second = LeaderElector(store, "ns", "l", "b", 15, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert await first.try_acquire() is True
    await second.release()  # not the holder: nothing happens
    assert await second.try_acquire() is False
    await first.release()
    assert store.lease is not None
    assert "holderIdentity" not in store.lease["spec"]
    assert await second.try_acquire() is True


async def test_a_lease_taken_over_mid_run_stops_the_leader_at_once() -> None:
    """Another replica holds the Lease (it expired by that replica's clock): this one must not keep acting."""
    store = LeaseStore()
    clock = [NOW]
    elector = LeaderElector(store, "ns", "l", "me", 3, clock=lambda: clock[0])  # type: ignore[arg-type]
    assert await elector.try_acquire() is True
    assert store.lease is not None
    store.lease["spec"]["holderIdentity"] = "other"  # taken over; our clock says our Lease is still valid
    stop = asyncio.Event()
    await asyncio.wait_for(elector.keep_leading(stop), timeout=5)
    assert stop.is_set()
    assert elector.lost is True


async def test_a_hanging_renewal_is_abandoned_when_the_lease_expires() -> None:
    """The API call never answers (network cut): the leader stops when its Lease expires, not when the call
    times out."""

    class HangingStore(LeaseStore):
        async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
            if self.fail:
                await asyncio.sleep(3600)
            return await super().get(kind, namespace, name)

    store = HangingStore()
    elector = LeaderElector(store, "ns", "l", "me", 2)  # type: ignore[arg-type]
    assert await elector.try_acquire() is True
    store.fail = True
    stop = asyncio.Event()
    await asyncio.wait_for(elector.keep_leading(stop), timeout=10)
    assert elector.lost is True


async def test_an_unreachable_api_server_is_one_warning_not_a_line_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A standby polls every few seconds; an API server that is down must not fill the log at info level: one
    warning when it starts failing, a reminder every FAILURE_REMINDER, one info line when it answers again."""
    clock = [NOW]
    store = LeaseStore()
    store.lease = lease("other", 0, duration=3600)
    elector = LeaderElector(store, "ns", "l", "me", 15, clock=lambda: clock[0])  # type: ignore[arg-type]
    store.fail = True
    with caplog.at_level(logging.DEBUG, logger="comfyui_operator.leader"):
        for _ in range(61):  # five minutes of attempts, one every 5 s
            assert await elector.try_acquire() is False
            clock[0] += timedelta(seconds=5)
        store.fail = False
        assert await elector.try_acquire() is False  # answers again; the other replica still holds it
    above_debug = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG]
    assert [level for level, _ in above_debug] == ["WARNING", "WARNING", "INFO"]
    assert "the API server failed (HTTP 0: connection refused)" in above_debug[0][1]
    assert "has failed for 300 s" in above_debug[1][1]
    assert "answers again after 305 s" in above_debug[2][1]
    assert not any("not acquired" in message for _, message in above_debug)
