"""`PartFile`: a download in progress, the cache's `Sink`. Bytes go to `tmp/<random>.part`.

Each batch of received bytes is hashed by one worker thread and written by another, both in parallel with the
socket reads on the event loop, which waits only when DEPTH batches are queued. (Hashing and writing in one
thread made that thread the bottleneck: sha256 alone runs at ~1.7 GiB/s on one core, the two together at ~1.0,
and whether that thread shared a core with the event loop made rounds bimodal; see docs/cache.md.)"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

BATCH = 4 << 20  # bytes handed to the worker thread at a time
DEPTH = 4  # batches queued for the worker before the event loop waits
PROGRESS_MIN_BYTES = 64 << 20


class PartFile:
    def __init__(
        self,
        path: Path,
        *,
        claim: Callable[[int], Awaitable[None]],
        name: str,
        progress_interval: float,
    ) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._claim = claim
        self._hash = hashlib.sha256()
        self._size = 0
        self._batch: list[bytes] = []
        self._batched = 0
        self._pending: collections.deque[asyncio.Future[None]] = collections.deque()
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="partfile-sha256")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="partfile-write")
        self._name = name
        self._interval = progress_interval
        self._started = self._logged = time.monotonic()
        self._total = 0

    @property
    def size(self) -> int:
        return self._size

    async def claim(self, total: int) -> None:
        await self._claim(total)
        self._total = max(self._total, total)

    async def write(self, data: bytes) -> None:
        self._batch.append(data)
        self._batched += len(data)
        self._size += len(data)
        if self._batched >= BATCH:
            await self._hand_off()
            self._progress()

    async def _hand_off(self) -> None:
        """Queue the batch for both workers (one thread each: batches are hashed and written in order)."""
        while len(self._pending) >= DEPTH or (self._pending and self._pending[0].done()):
            await self._pending.popleft()
        if self._batch:
            batch, self._batch, self._batched = self._batch, [], 0
            loop = asyncio.get_running_loop()
            hashed = loop.run_in_executor(self._hasher, self._hash_batch, batch)
            written = loop.run_in_executor(self._writer, self._write_batch, batch)
            self._pending.append(asyncio.ensure_future(_both(hashed, written)))

    def _hash_batch(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._hash.update(chunk)

    def _write_batch(self, batch: list[bytes]) -> None:
        views = [memoryview(c) for c in batch]
        while views:
            n = os.writev(self._fd, views)
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    async def flush(self) -> None:
        """Every accepted byte is on its way to disk and hashed (raises what a write raised)."""
        await self._hand_off()
        while self._pending:
            await self._pending.popleft()

    async def reset(self) -> None:
        await self.flush()
        await asyncio.get_running_loop().run_in_executor(self._writer, self._truncate)
        self._hash = hashlib.sha256()
        self._size = 0

    def _truncate(self) -> None:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)

    async def digest(self) -> str:
        await self.flush()
        if self._total >= PROGRESS_MIN_BYTES or self._size >= PROGRESS_MIN_BYTES:
            elapsed = max(time.monotonic() - self._started, 1e-6)
            log.info("download %s: done, %d MiB in %.1fs", self._name, self._size >> 20, elapsed)
        return self._hash.hexdigest()

    async def close(self) -> None:
        """Wait for writes still running (never leave a thread writing to a closed fd), then close."""
        await asyncio.gather(*self._pending, return_exceptions=True)
        self._pending.clear()
        self._hasher.shutdown(wait=False)
        self._writer.shutdown(wait=False)
        os.close(self._fd)

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._logged < self._interval or max(self._total, self._size) < PROGRESS_MIN_BYTES:
            return
        self._logged = now
        rate = self._size / max(now - self._started, 1e-6) / (1 << 20)
        if self._total:
            percent = 100 * self._size / self._total
            log.info(
                "download %s: %d / %d MiB (%.0f%%), %.0f MiB/s",
                self._name,
                self._size >> 20,
                self._total >> 20,
                percent,
                rate,
            )
        else:
            log.info("download %s: %d MiB, %.0f MiB/s", self._name, self._size >> 20, rate)


async def _both(hashed: asyncio.Future[None], written: asyncio.Future[None]) -> None:
    """Wait for both halves of a batch; the first error wins (the other half still finishes)."""
    results = await asyncio.gather(hashed, written, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
