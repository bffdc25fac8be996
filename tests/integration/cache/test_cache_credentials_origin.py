"""Credentials go only to the origin they were given for: a redirect to another origin (another port is one)
carries no Authorization header, no query credential and no `user:pass@`."""

# ruff: noqa: F811  (pytest fixtures imported from cache_fileserver are redefined as arguments)

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from aiohttp import web
from cache_fileserver import FileServer, build_app, file_server, make_cache, start_app  # noqa: F401
from comfyui_sidecar.cache import ModelCache
from comfyui_sidecar.fetching import BearerAuth, Credential, Fetch, QueryAuth

queries: list[str] = []


@pytest.fixture
async def other_origin() -> AsyncIterator[FileServer]:
    fs = FileServer()
    app = build_app(fs)

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        queries.append(request.query_string)
        return await handler(request)

    app.middlewares.append(record)
    runner, fs.base = await start_app(app)
    yield fs
    await runner.cleanup()


def model(url: str) -> Fetch:
    return Fetch(url=url, node_id="1", input_name="ckpt_name", kind="model", folder="checkpoints")


@pytest.mark.parametrize(
    ("credential", "userinfo"),
    [
        (Credential(url_pattern="**", auth=BearerAuth(type="bearer", token="s3cret")), ""),
        (
            Credential(
                url_pattern="**", auth=QueryAuth(type="query", query_param="token", query_value="s3cret")
            ),
            "",
        ),
        (None, "me:s3cret@"),
    ],
)
async def test_a_redirect_to_another_origin_carries_no_credential(
    file_server: FileServer,
    other_origin: FileServer,
    make_cache,
    credential: Credential | None,
    userinfo: str,
) -> None:
    queries.clear()
    other_origin.add("x.pt", b"payload")
    cache: ModelCache = await make_cache()
    target = other_origin.url("/files/x.pt")
    url = file_server.url("/redirect?to=" + quote(target, safe="")).replace("http://", f"http://{userinfo}")
    async with cache.pin([model(url)], [credential] if credential else []) as resolved:
        assert (cache.models_root / "checkpoints" / resolved[model(url)]).read_bytes() == b"payload"
    assert file_server.gets["/redirect"] == 1
    assert other_origin.auth_headers == [None]  # the other origin saw no Authorization
    assert all("s3cret" not in q for q in queries)
