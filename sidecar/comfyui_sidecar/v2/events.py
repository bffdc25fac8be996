"""GET /api/v2/jobs/{id}/events: one job's live Server-Sent Events.

On connect: a `status` snapshot (with the queue position while queued), then the latest `progress` and the
latest `preview` if any. Then live: `status` on every change (and queue position change), `progress` and
`preview` at most every THROTTLE_S (the latest wins), `output` once per output, all outputs before the
terminal `status`, after which the stream ends. A comment line every EVENT_HEARTBEAT_S keeps idle streams
open (clients give up after 45 s of silence). No ids, no replay: the job (GET) is the source of truth.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from comfyui_sidecar.job_records import JobRecord, OutputFile, Preview, Watcher
from comfyui_sidecar.jobs import JobStore
from comfyui_sidecar.v2 import render, schemas
from comfyui_sidecar.v2.links import External

THROTTLE_S = 0.5
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


def preview_data(preview: Preview) -> dict[str, Any]:
    return schemas.PreviewEvent(
        node_id=preview.node_id,
        content_type=preview.content_type,
        data_base64=base64.b64encode(preview.data).decode(),
    ).dump()


class EventStream:
    def __init__(
        self,
        store: JobStore,
        record: JobRecord,
        *,
        key: bytes,
        ext: External,
        heartbeat_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.record = record
        self.key = key
        self.ext = ext
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self._sent_at: dict[str, float] = {}
        self._held: dict[str, bytes] = {}

    def _progress(self) -> bytes | None:
        snapshot = render.progress(self.record)
        return frame("progress", snapshot.dump()) if snapshot is not None else None

    def _throttled(self, kind: str, data: bytes | None) -> bytes | None:
        """Send now, or hold the latest until THROTTLE_S has passed since the last one of this kind."""
        if data is None:
            return None
        if self.clock() - self._sent_at.get(kind, -THROTTLE_S) >= THROTTLE_S:
            self._sent_at[kind] = self.clock()
            self._held.pop(kind, None)
            return data
        self._held[kind] = data
        return None

    def _due(self) -> list[bytes]:
        out = []
        for kind in list(self._held):
            if self.clock() - self._sent_at.get(kind, 0.0) >= THROTTLE_S:
                self._sent_at[kind] = self.clock()
                out.append(self._held.pop(kind))
        return out

    def _render(self, kind: str, payload: Any) -> tuple[list[bytes], bool]:
        """Frames for one store notification; True when it was the terminal status."""
        if kind == "status":
            status, position = payload
            terminal = status in schemas.TERMINAL
            frames = list(self._held.values()) if terminal else []  # the last progress before the end
            self._held.clear()
            data = schemas.StatusEvent(status=status, queue_position=position).dump()
            return [*frames, frame("status", data)], terminal
        if kind == "output" and isinstance(payload, OutputFile):
            return [frame("output", render.output(self.key, self.record, payload, self.ext).dump())], False
        if kind == "progress":
            sent = self._throttled("progress", self._progress())
            return ([sent] if sent else []), False
        if kind == "preview" and isinstance(payload, Preview):
            sent = self._throttled("preview", frame("preview", preview_data(payload)))
            return ([sent] if sent else []), False
        return [], False

    async def serve(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=HEADERS)
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        watcher = self.store.watch(self.record)
        try:
            # The snapshot and the drain happen with no await in between, so no change is lost or doubled.
            record = self.record
            first = [frame("status", render.status_event(record, self.store.queue_position(record)))]
            if not record.terminal:
                snapshot = self._progress()
                if snapshot is not None:
                    first.append(snapshot)
                    self._sent_at["progress"] = self.clock()
                if record.preview is not None:
                    first.append(frame("preview", preview_data(record.preview)))
                    self._sent_at["preview"] = self.clock()
            watcher.drain()
            await response.prepare(request)
            await response.write(b"".join(first))
            if not record.terminal:
                await self._live(response, watcher)
        except ConnectionResetError:  # the client went away: nothing more to send
            pass
        finally:
            self.store.unwatch(self.record, watcher)
        return response

    async def _live(self, response: web.StreamResponse, watcher: Watcher) -> None:
        last_write = self.clock()
        while True:
            wait = self.heartbeat_s - (self.clock() - last_write)
            if self._held:
                wait = min(wait, THROTTLE_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.wake.wait(), timeout=max(0.01, wait))
            out: list[bytes] = []
            done = False
            for kind, payload in watcher.drain():
                frames, terminal = self._render(kind, payload)
                out += frames
                if terminal:
                    done = True
                    break
            if not done:
                out += self._due()
            if not out and self.clock() - last_write >= self.heartbeat_s:
                out.append(b": keepalive\n\n")
            if out:
                await response.write(b"".join(out))
                last_write = self.clock()
            if done:
                return
