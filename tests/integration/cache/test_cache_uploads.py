"""Output uploads: http_upload (PUT) against a local server; hf_upload path and error handling."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from cache_fileserver import start_app
from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.uploads import (
    HfUpload,
    HttpUpload,
    Uploader,
    UploadError,
    UploadTargets,
    hf_file_url,
    hf_path_in_repo,
    http_upload_url,
)


@dataclass(frozen=True)
class Out:
    filename: str
    data: bytes
    content_type: str = "image/png"


@dataclass
class PutServer:
    base: str = ""
    received: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    fail: bool = False


@pytest.fixture
async def put_server() -> AsyncIterator[PutServer]:
    server = PutServer()

    async def handle(request: web.Request) -> web.Response:
        if server.fail:
            return web.Response(status=503, text="busy")
        server.received[request.path] = (await request.read(), dict(request.headers))
        return web.Response(status=201)

    app = web.Application()
    app.router.add_put("/{tail:.*}", handle)
    runner, server.base = await start_app(app)
    yield server
    await runner.cleanup()


async def upload_outputs(
    files: list[Out], *, http_upload: HttpUpload | None, hf_upload: HfUpload | None, settings: CacheSettings
) -> list[str]:
    egress = Egress(settings)
    uploader = Uploader(egress, settings)
    try:
        return await uploader.upload(files, UploadTargets(hf_upload=hf_upload, http_upload=http_upload))
    finally:
        await uploader.close()
        await egress.close()


def allowing(**extra: Any) -> CacheSettings:
    return CacheSettings(download_allow_networks=["127.0.0.1/32"], **extra)


async def test_http_upload_puts_every_file_with_type_and_auth(put_server: PutServer) -> None:
    files = [Out("a.png", b"png-bytes"), Out("b.jpg", b"jpg-bytes", "image/jpeg")]
    prefix = put_server.base.replace("http://", "http://me:pw@") + "/bucket/run1/"
    urls = await upload_outputs(
        files, http_upload=HttpUpload(url_prefix=prefix), hf_upload=None, settings=allowing()
    )
    assert urls == [f"{put_server.base}/bucket/run1/a.png", f"{put_server.base}/bucket/run1/b.jpg"]
    body, headers = put_server.received["/bucket/run1/a.png"]
    assert body == b"png-bytes"
    assert headers["Content-Type"] == "image/png"
    assert base64.b64decode(headers["Authorization"].split()[1]) == b"me:pw"
    assert put_server.received["/bucket/run1/b.jpg"][1]["Content-Type"] == "image/jpeg"


async def test_http_upload_uses_the_global_header(put_server: PutServer) -> None:
    settings = allowing(http_auth_header_name="X-Api-Key", http_auth_header_value="k1")
    await upload_outputs(
        [Out("a.png", b"x")],
        http_upload=HttpUpload(url_prefix=put_server.base),
        hf_upload=None,
        settings=settings,
    )
    assert put_server.received["/a.png"][1]["X-Api-Key"] == "k1"


async def test_http_upload_failure_is_reported(put_server: PutServer) -> None:
    put_server.fail = True
    with pytest.raises(UploadError, match="HTTP 503"):
        await upload_outputs(
            [Out("a.png", b"x")],
            http_upload=HttpUpload(url_prefix=put_server.base),
            hf_upload=None,
            settings=allowing(),
        )


async def test_http_upload_to_internal_address_refused_without_allow_list(put_server: PutServer) -> None:
    with pytest.raises(UploadError, match="loopback"):
        await upload_outputs(
            [Out("a.png", b"x")],
            http_upload=HttpUpload(url_prefix=put_server.base),
            hf_upload=None,
            settings=CacheSettings(),
        )
    assert put_server.received == {}


async def test_hf_upload_without_token_is_a_clear_error() -> None:
    with pytest.raises(UploadError, match="needs a Hugging Face token"):
        await upload_outputs(
            [Out("a.png", b"x")], http_upload=None, hf_upload=HfUpload(repo="o/r"), settings=CacheSettings()
        )


async def test_hf_upload_failure_is_reported_not_swallowed() -> None:
    seen: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"error": "Invalid credentials"}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner, base = await start_app(app)
    try:
        settings = CacheSettings(hf_token="hf_x", hf_endpoint=base)
        with pytest.raises(UploadError, match=r"hf_upload to o/r failed: .*HTTP 401"):
            await upload_outputs(
                [Out("a.png", b"x")], http_upload=None, hf_upload=HfUpload(repo="o/r"), settings=settings
            )
    finally:
        await runner.cleanup()
    assert seen  # the Hub was really asked


def test_upload_urls() -> None:
    assert http_upload_url("https://h/p///", "../x.png") == "https://h/p/x.png"
    assert hf_path_in_repo("/", "a.png") == "a.png"
    assert hf_path_in_repo("/runs/1/", "a b.png") == "runs/1/a b.png"
    with pytest.raises(UploadError):
        hf_path_in_repo("../up", "a.png")
    upload = HfUpload.model_validate({"repo": "o/ds", "repo_type": "dataset", "async": True})
    assert upload.async_ is True
    assert hf_file_url("https://huggingface.co", upload, "runs/a b.png") == (
        "https://huggingface.co/datasets/o/ds/resolve/main/runs/a%20b.png"
    )
