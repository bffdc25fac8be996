"""A ComfyUI that accepts connections but stops answering HTTP must not hang a request (issue #186)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from comfyui_sidecar import comfy_client
from comfyui_sidecar.comfy_client import ComfyClient, ComfyError
from comfyui_sidecar.outputs import OutputRef


async def _stall(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.Response()


@pytest.fixture
async def stalled_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _stall)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def _client(url: str, session: aiohttp.ClientSession) -> ComfyClient:
    return ComfyClient(url, session, heartbeat_s=1, reconnect_max_s=1, lost_timeout_s=1, history_poll_s=0.05)


async def test_timeout_is_kept_while_history_and_queue_do_not_answer(
    stalled_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(comfy_client, "CONTROL_TIMEOUT_S", 0.2)
    async with aiohttp.ClientSession() as session:
        client = _client(stalled_url, session)
        client.register("p1")
        with pytest.raises(ComfyError) as caught:
            await asyncio.wait_for(client.wait("p1", 0.3), 5)
        assert caught.value.status == 504


async def test_a_settled_waiter_ends_the_wait_while_history_does_not_answer(stalled_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        client = _client(stalled_url, session)
        client.register("p1")
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, client._fail_all, ComfyError(502, "Lost the connection to ComfyUI"))
        started = loop.time()
        with pytest.raises(ComfyError) as caught:
            await asyncio.wait_for(client.wait("p1", 60), 5)
        assert caught.value.status == 502
        assert loop.time() - started < 2


async def test_outputs_after_a_reconnect_do_not_wait_forever_on_history(
    stalled_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(comfy_client, "CONTROL_TIMEOUT_S", 0.2)
    async with aiohttp.ClientSession() as session:
        client = _client(stalled_url, session)
        client.register("p1")
        waiter = client._waiters["p1"]
        waiter.execution.outputs_complete = False  # events were missed: outputs must come from /history
        waiter.future.set_result(waiter.execution)
        with pytest.raises(ComfyError) as caught:
            await asyncio.wait_for(client.wait("p1", 60), 5)
        assert caught.value.status == 502


async def test_queueing_on_a_stalled_comfyui_ends_with_504(stalled_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        client = _client(stalled_url, session)
        with pytest.raises(ComfyError) as caught:
            await asyncio.wait_for(client.queue({}, "p1", timeout_s=0.3), 5)
        assert caught.value.status == 504


async def test_view_on_an_unreachable_comfyui_is_a_502_not_a_crash() -> None:
    async with aiohttp.ClientSession() as session:
        client = _client("http://127.0.0.1:9", session)
        with pytest.raises(ComfyError) as caught:
            await client.view(OutputRef("1", "a.png", "", "output"))
        assert caught.value.status == 502


async def test_reconnect_does_not_fail_a_prompt_that_is_still_being_queued() -> None:
    """After a reconnect, a prompt absent from history and queue was lost only if ComfyUI had accepted it."""

    async def history(request: web.Request) -> web.Response:
        return web.json_response({})

    async def queue(request: web.Request) -> web.Response:
        return web.json_response({"queue_running": [], "queue_pending": []})

    async def prompt(request: web.Request) -> web.Response:
        return web.json_response({"prompt_id": "accepted", "number": 1, "node_errors": {}})

    app = web.Application()
    app.router.add_get("/history/{id}", history)
    app.router.add_get("/queue", queue)
    app.router.add_post("/prompt", prompt)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            client = _client(f"http://127.0.0.1:{port}", session)
            client.register("queueing")
            client.register("accepted")
            await client.queue({}, "accepted")
            await client._reconcile()
            assert not client._waiters["queueing"].future.done()
            lost = client._waiters["accepted"].future
            assert lost.done()
            with pytest.raises(ComfyError) as caught:
                lost.result()
            assert caught.value.status == 502
    finally:
        await runner.cleanup()


async def test_reconnect_is_not_held_by_a_history_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The websocket task reconciles after a reconnect; a stalled /history must not keep it from reading."""
    monkeypatch.setattr(comfy_client, "CONTROL_TIMEOUT_S", 0.2)
    attempts = 0

    async def ws(request: web.Request) -> web.StreamResponse:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # the first connection fails, so the next one is a reconnect
            return web.Response(status=503)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for _ in socket:
            pass
        return socket

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/history/{id}", _stall)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            client = _client(f"http://127.0.0.1:{port}", session)
            client.register("p1")
            client._waiters["p1"].queued = True
            task = asyncio.create_task(client.run())
            try:
                await asyncio.wait_for(client.connected.wait(), 5)
            finally:
                await client.close()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        await runner.cleanup()


async def test_interrupt_on_a_stalled_comfyui_answers_failed(
    stalled_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(comfy_client, "CONTROL_TIMEOUT_S", 0.2)
    async with aiohttp.ClientSession() as session:
        client = _client(stalled_url, session)
        assert not await asyncio.wait_for(client.cancel("p1"), 5)


async def test_models_and_view_give_up_on_a_silent_comfyui(
    stalled_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(comfy_client, "CONTROL_TIMEOUT_S", 0.2)
    monkeypatch.setattr(comfy_client, "VIEW_READ_TIMEOUT_S", 0.2)
    async with aiohttp.ClientSession() as session:
        client = _client(stalled_url, session)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.models(), 5)
        with pytest.raises(ComfyError) as caught:
            await asyncio.wait_for(client.view(OutputRef("9", "a.png", "", "output")), 5)
        assert caught.value.status == 502
