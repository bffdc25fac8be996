"""The standby /healthz server over real HTTP on 127.0.0.1, and that it frees its port."""

from __future__ import annotations

import socket

import aiohttp
from comfyui_operator.health import STANDBY_BODY, standby_health


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_standby_healthz_answers_then_frees_the_port() -> None:
    port = _free_port()
    async with aiohttp.ClientSession() as session, standby_health(port, host="127.0.0.1"):
        async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
            assert await response.json() == STANDBY_BODY
        async with session.get(f"http://127.0.0.1:{port}/other") as response:
            assert response.status == 404
    with socket.socket() as sock:  # kopf can bind the same port afterwards
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


async def test_port_zero_serves_nothing() -> None:
    async with standby_health(0):
        pass
