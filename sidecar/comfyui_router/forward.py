"""Passing one client request to one replica and its answer back (bodies, event streams, byte ranges).

The client's headers go along (Host and X-Forwarded-* too, so the sidecar builds the links a client can
follow, and Authorization, which the sidecar checks), minus the hop-by-hop ones and the peers' hop header. A
replica that is found gone while the router waits for it, or while its answer streams, ends the wait at once
(`ReplicaGone`): nothing hangs on a pod that no longer exists.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from comfyui_sidecar.v2.links import HOP_HEADER
from multidict import CIMultiDict

from comfyui_router.replicas import Replica

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0
_HOP_BY_HOP = frozenset(
    name.lower()
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        HOP_HEADER,
    )
)
Rewrite = Callable[[bytes], bytes]


class ReplicaGone(Exception):
    """The replica left while the request was with it: the outcome is unknown."""

    def __init__(self, name: str) -> None:
        super().__init__(f"replica {name} went away before it answered")
        self.name = name


class Unreachable(Exception):
    """No connection could be made: the request never reached the replica (safe to send elsewhere)."""


class Broken(Exception):
    """The connection failed after the request was sent: the outcome is unknown."""


async def race(awaitable: Awaitable[T], replica: Replica) -> T:
    """`awaitable`'s result, or ReplicaGone as soon as the replica is found gone."""
    task = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(replica.gone.wait())
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ReplicaGone(replica.name)


def request_headers(request: web.Request, *, drop: tuple[str, ...] = ()) -> CIMultiDict[str]:
    dropped = _HOP_BY_HOP | {name.lower() for name in drop}
    return CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in dropped)


def _response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP)


class Forwarder:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def open(
        self,
        replica: Replica,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: Any,
    ) -> aiohttp.ClientResponse:
        """The replica's answer (status and headers; the body still to read)."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
        opening = self.session.request(
            method,
            replica.url + path_qs,
            headers=headers,
            data=body,
            timeout=timeout,
            allow_redirects=False,
            auto_decompress=False,
        )
        try:
            return await race(opening, replica)
        except aiohttp.ClientConnectorError as error:
            raise Unreachable(f"replica {replica.name} could not be reached: {error}") from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise Broken(f"replica {replica.name} failed: {type(error).__name__}") from None

    async def relay(
        self,
        request: web.Request,
        replica: Replica,
        upstream: aiohttp.ClientResponse,
        rewrite: Rewrite | None = None,
    ) -> web.StreamResponse:
        """Send `upstream` back to the client: whole (rewritten) for JSON, chunk by chunk otherwise."""
        watcher = asyncio.ensure_future(replica.gone.wait())
        watcher.add_done_callback(lambda task: None if task.cancelled() else upstream.close())
        try:
            streaming = upstream.content_type == "text/event-stream" or rewrite is None
            if not streaming:
                raw = await upstream.read()
                assert rewrite is not None
                response = web.Response(status=upstream.status, body=rewrite(raw))
                response.headers.extend(_response_headers(upstream))
                return response
            return await self._stream(request, upstream, rewrite)
        except (aiohttp.ClientError, TimeoutError) as error:
            if replica.gone.is_set():
                raise ReplicaGone(replica.name) from None
            raise Broken(f"replica {replica.name} failed: {type(error).__name__}") from None
        finally:
            watcher.cancel()
            upstream.release()

    async def _stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, rewrite: Rewrite | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status)
        response.headers.extend(_response_headers(upstream))
        if upstream.content_length is not None and rewrite is None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        partial = b""
        try:
            async for received in upstream.content.iter_any():
                out = received
                if rewrite is not None:  # an event stream: rewrite whole lines only
                    buffered = partial + received
                    cut = buffered.rfind(b"\n") + 1
                    out, partial = (rewrite(buffered[:cut]) if cut else b""), buffered[cut:]
                if out:
                    await response.write(out)
            if partial:
                await response.write(rewrite(partial) if rewrite else partial)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client left
        except (aiohttp.ClientError, TimeoutError):
            pass  # the replica stopped mid-stream: the client polls the job and sees what happened
        return response
