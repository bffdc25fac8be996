"""In-cluster file server for the real-pods tier, run in a pod of the sidecar image: fileserver.py PORT

GET /files/<name>?size=N&scale=K    a valid .safetensors file of N bytes (metadata {"scale": K})
GET /slow/<name>?size=N&seconds=S   the same, streamed evenly over S seconds
GET /stats                          {"requests": {"<name>": count}} of the GETs above
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

from aiohttp import web

CHUNK = 64 * 1024
requests: Counter[str] = Counter()


def model_bytes(size: int, scale: str) -> bytes:
    header = json.dumps({"__metadata__": {"scale": scale}}).encode()
    header += b" " * (-len(header) % 8)
    body = len(header).to_bytes(8, "little") + header
    return body + b"\0" * max(0, size - len(body))


def _content(request: web.Request) -> bytes:
    requests[request.match_info["name"]] += 1
    return model_bytes(int(request.query.get("size", "4096")), request.query.get("scale", "2"))


async def files(request: web.Request) -> web.Response:
    return web.Response(body=_content(request), content_type="application/octet-stream")


async def slow(request: web.Request) -> web.StreamResponse:
    data = _content(request)
    seconds = float(request.query.get("seconds", "10"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = len(data)
    await response.prepare(request)
    chunks = max(1, -(-len(data) // CHUNK))
    for start in range(0, len(data), CHUNK):
        await response.write(data[start : start + CHUNK])
        await asyncio.sleep(seconds / chunks)
    await response.write_eof()
    return response


async def stats(_: web.Request) -> web.Response:
    return web.json_response({"requests": dict(requests)})


def main() -> None:
    app = web.Application()
    app.add_routes([web.get("/files/{name}", files), web.get("/slow/{name}", slow), web.get("/stats", stats)])
    web.run_app(app, host="0.0.0.0", port=int(sys.argv[1]), access_log=None)


if __name__ == "__main__":
    main()
