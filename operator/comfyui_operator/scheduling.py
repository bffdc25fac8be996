"""When the operator acts besides kopf's own handler calls: coalesced status refreshes after watch events, a
periodic refresh of every instance, and retries with backoff.

None of these uses a kopf timer or daemon: kopf puts its finalizer on every object that has one, and then
deleting an instance (or its namespace) hangs whenever no operator runs. Each class here does no API I/O of
its own; it only decides when to call the function it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Action = Callable[[str, str], Awaitable[object]]


class Debouncer:
    """Coalesces bursts of watch events into one refresh per instance: at most one task per instance, and an
    event during a running refresh gets exactly one more refresh after it. (That no two status refreshes of
    one instance overlap, whoever starts them, is the Reconciler's lock.)"""

    # Refreshes run back to back while events keep arriving; past this the periodic refresh takes over.
    MAX_BACK_TO_BACK = 30

    def __init__(self, action: Action, delay_seconds: float = 1.0) -> None:
        self._action = action
        self._delay = delay_seconds
        self._pending: dict[Key, asyncio.Task[None]] = {}
        self._again: set[Key] = set()  # scheduled while its refresh was running: refresh once more

    def schedule(self, namespace: str, name: str) -> bool:
        """Schedule a refresh; False when one is already pending (or running) for this instance."""
        key = (namespace, name)
        if key in self._pending:
            self._again.add(key)
            return False
        self._pending[key] = asyncio.create_task(self._run(key))
        return True

    async def _run(self, key: Key) -> None:
        try:
            for _ in range(self.MAX_BACK_TO_BACK):
                await asyncio.sleep(self._delay)
                self._again.discard(key)  # the refresh below sees everything that happened until now
                try:
                    await self._action(*key)
                except Exception:
                    logger.exception("status refresh of %s/%s failed", *key)
                if key not in self._again:
                    return
        finally:
            self._pending.pop(key, None)
            self._again.discard(key)

    async def close(self) -> None:
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def pending(self) -> int:
        return len(self._pending)


class PeriodicRefresh:
    """Schedules a refresh of every known instance once per `interval_seconds`, spread evenly over the
    interval (200 instances at 60 s: one every 0.3 s, never 200 at once)."""

    def __init__(self, schedule: Callable[[str, str], object], interval_seconds: float) -> None:
        self._schedule = schedule
        self._interval = interval_seconds
        self._known: set[Key] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, namespace: str, name: str) -> None:
        self._known.add((namespace, name))

    def discard(self, namespace: str, name: str) -> None:
        self._known.discard((namespace, name))

    @property
    def known(self) -> frozenset[Key]:
        return frozenset(self._known)

    async def sweep(self) -> None:
        """One round: every instance known when it starts (and still known when its turn comes)."""
        keys = sorted(self._known)
        pause = self._interval / max(1, len(keys))
        for key in keys:
            if key in self._known:
                self._schedule(*key)
            await asyncio.sleep(pause)

    async def _loop(self) -> None:
        while True:
            if self._known:
                await self.sweep()
            else:
                await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class Retrier:
    """One retry loop per instance: `start` replaces the instance's running loop (a new spec or a new failure
    starts the backoff from the beginning), `cancel` stops it."""

    def __init__(self, loop: Callable[[str, str, int], Coroutine[Any, Any, None]]) -> None:
        self._loop = loop
        self._tasks: dict[Key, asyncio.Task[None]] = {}

    def start(self, namespace: str, name: str, first_attempt: int = 0) -> None:
        key = (namespace, name)
        self.cancel(namespace, name)
        task = asyncio.create_task(self._loop(namespace, name, first_attempt))
        self._tasks[key] = task
        task.add_done_callback(
            lambda done: self._tasks.pop(key, None) if self._tasks.get(key) is done else None
        )

    def cancel(self, namespace: str, name: str) -> None:
        task = self._tasks.pop((namespace, name), None)
        if task is not None:
            task.cancel()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
