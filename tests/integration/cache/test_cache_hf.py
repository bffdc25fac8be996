"""Hugging Face URLs through huggingface_hub against a local fake Hub (resolve -> CDN redirect, LFS etag)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from cache_fileserver import start_app
from comfyui_sidecar.cache import CacheSettings, ModelCache
from comfyui_sidecar.cache.naming import url_hash
from comfyui_sidecar.fetching import BearerAuth, Credential, Fetch, FetchError

REPO_FILE = "org/repo/resolve/main/unet/model.safetensors"


@dataclass
class FakeHub:
    data: bytes = field(default_factory=lambda: os.urandom(200_000))
    advertised_sha: str = ""
    hub: str = ""
    cdn: str = ""
    hub_auth: list[str | None] = field(default_factory=list)
    cdn_auth: list[str | None] = field(default_factory=list)
    cdn_gets: int = 0


@pytest.fixture
async def fake_hub() -> AsyncIterator[FakeHub]:
    fake = FakeHub()
    fake.advertised_sha = hashlib.sha256(fake.data).hexdigest()

    async def resolve(request: web.Request) -> web.Response:
        fake.hub_auth.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer hf_good":
            return web.json_response({"error": "Access to this repo is restricted"}, status=401)
        headers = {
            "Location": f"{fake.cdn}/blob/abc?signature=xyz",
            "X-Repo-Commit": "0" * 40,
            "X-Linked-Etag": f'"{fake.advertised_sha}"',
            "X-Linked-Size": str(len(fake.data)),
            "ETag": '"gitsha"',
        }
        return web.Response(status=302, headers=headers)

    async def blob(request: web.Request) -> web.Response:
        fake.cdn_gets += 1
        fake.cdn_auth.append(request.headers.get("Authorization"))
        return web.Response(body=fake.data, content_type="application/octet-stream")

    hub_app = web.Application()
    hub_app.router.add_route("*", "/org/repo/resolve/main/{path:.*}", resolve)
    cdn_app = web.Application()
    cdn_app.router.add_get("/blob/abc", blob)
    hub_runner, fake.hub = await start_app(hub_app)
    cdn_runner, fake.cdn = await start_app(cdn_app)
    yield fake
    await cdn_runner.cleanup()
    await hub_runner.cleanup()


async def cache_for(tmp_path: Any, fake: FakeHub, **extra: Any) -> ModelCache:
    settings = CacheSettings(
        cache_dir=tmp_path / "cache",
        hf_endpoint=fake.hub,
        download_allow_networks=["127.0.0.1/32"],
        download_attempts=1,
        **extra,
    )
    cache = ModelCache(settings, input_dir=tmp_path / "input")
    await cache.start()
    return cache


def unet(url: str) -> Fetch:
    return Fetch(url=url, node_id="1", input_name="unet_name", kind="model", folder="diffusion_models")


async def test_hf_url_with_token_from_settings(tmp_path: Any, fake_hub: FakeHub) -> None:
    cache = await cache_for(tmp_path, fake_hub, hf_token="hf_good")
    url = f"{fake_hub.hub}/{REPO_FILE}"
    try:
        async with cache.pin([unet(url)], []) as resolved:
            name = resolved[unet(url)]
            assert name == url_hash(url) + ".safetensors"
            assert (cache.models_root / "diffusion_models" / name).read_bytes() == fake_hub.data
    finally:
        await cache.close()
    assert fake_hub.hub_auth[-1] == "Bearer hf_good"
    assert fake_hub.cdn_auth == [None]  # the token never goes to the CDN


async def test_hf_per_request_bearer_wins(tmp_path: Any, fake_hub: FakeHub) -> None:
    cache = await cache_for(tmp_path, fake_hub, hf_token="hf_wrong")
    url = f"{fake_hub.hub}/{REPO_FILE}"
    creds = [Credential(url_pattern=f"{fake_hub.hub}/**", auth=BearerAuth(type="bearer", token="hf_good"))]
    try:
        async with cache.pin([unet(url)], creds):
            pass
        with pytest.raises(FetchError, match="Authentication required"):
            async with cache.pin([unet(url)], []):
                pass
    finally:
        await cache.close()
    assert fake_hub.cdn_gets == 1


async def test_hf_errors_are_clear_and_sha256_is_checked(tmp_path: Any, fake_hub: FakeHub) -> None:
    cache = await cache_for(tmp_path, fake_hub, hf_token="hf_wrong")
    url = f"{fake_hub.hub}/{REPO_FILE}"
    try:
        with pytest.raises(FetchError, match=r"Hugging Face .* org/repo/unet/model.safetensors \(HTTP 401\)"):
            async with cache.pin([unet(url)], []):
                pass
        good = [Credential(url_pattern="**", auth=BearerAuth(type="bearer", token="hf_good"))]
        fake_hub.advertised_sha = "0" * 64
        with pytest.raises(FetchError, match="sha256 mismatch"):
            async with cache.pin([unet(url)], good):
                pass
        assert cache.index.entries == {}
        assert list(cache.tmp.iterdir()) == []
    finally:
        await cache.close()
