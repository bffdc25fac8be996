"""The sidecar's listening socket. Pure socket setup, no aiohttp."""

from __future__ import annotations

import socket

DUAL_STACK_HOSTS = frozenset({"::", ""})


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket for `host:port`.

    `::` (comfyui-api's default HOST) means every interface, IPv6 and IPv4, as in upstream's Node server: one
    socket with IPV6_V6ONLY off. asyncio would bind `::` IPv6-only, which a pod reached over IPv4 (most
    clusters) refuses. Where the kernel has no IPv6, `::` falls back to 0.0.0.0.
    """
    if host in DUAL_STACK_HOSTS:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            return listening_socket("0.0.0.0", port)  # noqa: S104 - all interfaces is the point
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[str, int] | tuple[str, int, int, int] = ("::", port, 0, 0)
    else:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        address = info[4][:2] if info[0] == socket.AF_INET else info[4]  # type: ignore[assignment]
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
