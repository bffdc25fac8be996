"""The sidecar's listening socket: `::` (the default HOST) answers on IPv4 too, as upstream's server does."""

from __future__ import annotations

import socket

import pytest
from comfyui_sidecar.listen import listening_socket


def _connects(family: socket.AddressFamily, address: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(2)
        try:
            client.connect((address, port))
        except OSError:
            return False
        return True


def test_default_host_takes_ipv4_and_ipv6() -> None:
    server = listening_socket("::", 0)
    try:
        port = server.getsockname()[1]
        assert _connects(socket.AF_INET, "127.0.0.1", port)
        assert _connects(socket.AF_INET6, "::1", port)
    finally:
        server.close()


def test_an_ipv4_host_is_ipv4_only() -> None:
    server = listening_socket("127.0.0.1", 0)
    try:
        assert server.family == socket.AF_INET
        assert _connects(socket.AF_INET, "127.0.0.1", server.getsockname()[1])
    finally:
        server.close()


def test_a_port_in_use_is_an_oserror() -> None:
    first = listening_socket("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            listening_socket("127.0.0.1", first.getsockname()[1])
    finally:
        first.close()
