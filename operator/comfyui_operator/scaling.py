"""Scale to zero and back (spec.scaling, docs/router.md): the decision (pure) and the loop that asks each such
instance's router what it holds.

The router knows when a job arrives; the operator owns the Deployment. So the operator reads the router's
`GET /activity` (through the instance's Service, every COMFYUI_OPERATOR_SCALING_POLL_SECONDS) and scales:
idle for `idleTimeoutSeconds` (nothing held, waiting or in flight) -> the Deployment goes to 0 pods; a job
held or waiting -> back to spec.replicas. The state is written to `status.scaling` (so a restarted operator
keeps it) and the Deployment is applied with it. Neither the router nor the pods get Kubernetes API access.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfyui_operator import api
from comfyui_operator.kube import Kube
from comfyui_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)
REQUEST_TIMEOUT_SECONDS = 3.0
ACTIVITY_PATH = "/activity"
Key = tuple[str, str]


class Activity(BaseModel):
    """The fields of the router's GET /activity the operator decides on (comfyui_router.activity owns the
    answer; a unit test reads one through this model)."""

    model_config = ConfigDict(extra="ignore")

    held: int = Field(ge=0)
    waiting: int = Field(ge=0)
    inflight: int = Field(ge=0)
    idle_seconds: float = Field(ge=0)


def decide(spec: api.ComfyUIInstanceSpec, activity: Activity | None, scaled_to_zero: bool) -> bool:
    """Whether the replicas should be at zero now. No answer from the router changes nothing."""
    if spec.scaling is None or spec.routing is None or spec.replicas == 0:
        return False
    if activity is None:
        return scaled_to_zero
    if activity.held or activity.waiting:
        return False
    idle = activity.inflight == 0 and activity.idle_seconds >= spec.scaling.idle_timeout_seconds
    return scaled_to_zero or idle


def scaled_to_zero_in(status: Mapping[str, Any] | None) -> bool:
    scaling = (status or {}).get("scaling")
    return bool(isinstance(scaling, Mapping) and scaling.get("scaledToZero"))


def scaling_status(scaled: bool, spec: api.ComfyUIInstanceSpec, now: str) -> dict[str, Any]:
    if scaled and spec.scaling is not None:
        message = (
            f"no job for {spec.scaling.idle_timeout_seconds} s: the replicas are at zero; the router holds "
            f"the next job and the operator scales back to {spec.replicas}"
        )
    else:
        message = f"a job arrived: scaled back to {spec.replicas} replicas"
    return api.ScalingStatus(scaled_to_zero=scaled, last_transition_time=now, message=message).model_dump(
        by_alias=True
    )


def activity_url(template: str, *, name: str, namespace: str, cluster_domain: str, port: int) -> str:
    base = template.format(name=name, namespace=namespace, cluster_domain=cluster_domain, port=port)
    return base.rstrip("/") + ACTIVITY_PATH


async def read_activity(session: aiohttp.ClientSession, url: str) -> Activity | None:
    """The router's answer, or None (not reachable, not an activity report)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)) as answer:
            if answer.status != 200:
                return None
            return Activity.model_validate(await answer.json(content_type=None))
    except (aiohttp.ClientError, TimeoutError, ValueError, ValidationError) as error:
        logger.debug("no activity from %s: %s", url, error)
        return None


class ScalingLoop:
    """Calls `check(namespace, name, spec)` for every instance with spec.scaling, all at once, once per
    interval (each call is bounded by REQUEST_TIMEOUT_SECONDS and one status write on a change)."""

    def __init__(
        self,
        check: Callable[[str, str, api.ComfyUIInstanceSpec], Awaitable[None]],
        interval_seconds: float,
    ) -> None:
        self._check = check
        self._interval = interval_seconds
        self._known: dict[Key, api.ComfyUIInstanceSpec] = {}
        self._task: asyncio.Task[None] | None = None

    def track(self, namespace: str, name: str, spec: api.ComfyUIInstanceSpec | None) -> None:
        """The instance's latest spec (None, or a spec without scaling: no longer checked)."""
        if spec is not None and spec.scaling is not None:
            self._known[(namespace, name)] = spec
        else:
            self._known.pop((namespace, name), None)

    @property
    def known(self) -> frozenset[Key]:
        return frozenset(self._known)

    async def _one(self, key: Key, spec: api.ComfyUIInstanceSpec) -> None:
        try:
            await self._check(*key, spec)
        except Exception:
            logger.exception("scaling check of %s/%s failed", *key)

    async def sweep(self) -> None:
        await asyncio.gather(*(self._one(key, spec) for key, spec in sorted(self._known.items())))

    async def _loop(self) -> None:
        while True:
            started = asyncio.get_running_loop().time()
            await self.sweep()
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.1, self._interval - elapsed))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class ScaleToZero:
    """The operator's side of spec.scaling: which instances it scaled to zero (from status.scaling at first,
    so a restarted operator keeps them there), and the check that scales down or back."""

    def __init__(
        self,
        kube: Kube,
        settings: OperatorSettings,
        post_event: Callable[[Mapping[str, Any], str, str, str], None],
        clock: Callable[[], str],
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.post_event = post_event
        self.clock = clock
        self._scaled: dict[Key, bool] = {}
        self._session: aiohttp.ClientSession | None = None

    def scaled_to_zero(
        self, key: Key, spec: api.ComfyUIInstanceSpec | None, body: Mapping[str, Any] | None = None
    ) -> bool:
        """Whether the replicas are at zero because the instance was idle (what its Deployment is applied
        with): the operator's memory, else status.scaling of `body`."""
        if spec is None or spec.scaling is None or spec.routing is None:
            self._scaled.pop(key, None)
            return False
        if key not in self._scaled:
            self._scaled[key] = scaled_to_zero_in((body or {}).get("status"))
        return self._scaled[key]

    def forget(self, key: Key) -> None:
        self._scaled.pop(key, None)

    async def check(
        self,
        namespace: str,
        name: str,
        spec: api.ComfyUIInstanceSpec,
        reconcile: Callable[[Mapping[str, Any]], Awaitable[object]],
    ) -> None:
        """Ask the instance's router for its activity; on a change of the decision, write status.scaling, post
        an Event and `reconcile` (which applies the Deployment with the new size)."""
        key = (namespace, name)
        if key not in self._scaled:
            self.scaled_to_zero(key, spec, await self.kube.get(api.KIND, namespace, name))
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = activity_url(
            self.settings.router_url,
            name=name,
            namespace=namespace,
            cluster_domain=self.settings.cluster_domain,
            port=spec.service.port,
        )
        current = self.scaled_to_zero(key, spec)
        wanted = decide(spec, await read_activity(self._session, url), current)
        if wanted == current:
            return
        body = await self.kube.get(api.KIND, namespace, name)
        if body is None:
            return
        new = scaling_status(wanted, spec, self.clock())
        await self.kube.patch_status(namespace, name, {"scaling": new})
        self._scaled[key] = wanted
        reason = "ScaledToZero" if wanted else "ScaledUp"
        logger.info("%s/%s: %s: %s", namespace, name, reason, new["message"])
        await reconcile({**body, "status": {**(body.get("status") or {}), "scaling": new}})
        self.post_event(body, "Normal", reason, str(new["message"]))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
