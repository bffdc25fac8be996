"""Every bad input is a 4xx with a clear message, never a 500 (issue 10), on /prompt, /interrupt, /download.

Validation happens before anything is queued: the stand-in must not have run a prompt that is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from comfyui_sidecar.app import build_fetcher
from comfyui_standin.testing import RunningStandin
from sidecar_harness import HOST, RunningSidecar, empty_image_prompt, run_sidecar, sidecar_settings

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def with_cache(standin: RunningStandin, tmp_path: Path) -> AsyncIterator[RunningSidecar]:
    """A sidecar with the real cache (POST /download) and short body/idle timeouts."""
    settings = sidecar_settings(
        standin.url,
        standin.dirs,
        cache_dir=tmp_path / "cache",
        body_read_timeout_s=0.5,
        http_idle_timeout_s=1.0,
        max_prompt_nodes=50,
    )
    async with run_sidecar(settings, fetcher=build_fetcher(settings)) as running:
        yield running


async def post_raw(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.post(url, data=body, headers=headers or JSON) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


def nested(depth: int) -> bytes:
    return b'{"id": ' + b"[" * depth + b"]" * depth + b"}"


def message_of(body: Any) -> str:
    return str(body["message"] if "statusCode" in body else body["error"])  # Fastify shape or {error}


@pytest.mark.parametrize("path", ["/prompt", "/interrupt", "/download"])
@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
async def test_deeply_nested_json_is_400(
    with_cache: RunningSidecar, http: aiohttp.ClientSession, path: str, depth: int
) -> None:
    status, body = await post_raw(http, with_cache.url + path, nested(depth))
    assert status == 400, body
    assert "nested deeper than 64 levels" in body["error"]


@pytest.mark.parametrize("path", ["/prompt", "/interrupt", "/download"])
@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"url": ' + b"9" * 5000 + b"}", "5000 digits"),
        (b'{"url": 1e999}', "too large for a double"),
        (b'{"url": NaN}', "NaN is not valid JSON"),
        (b'{"url": "\xff"}', "not UTF-8"),
    ],
)
async def test_numbers_and_bytes_json_cannot_carry_are_400(
    with_cache: RunningSidecar, http: aiohttp.ClientSession, path: str, raw: bytes, fragment: str
) -> None:
    status, body = await post_raw(http, with_cache.url + path, raw)
    assert status == 400, body
    assert fragment in body["error"]


@pytest.mark.parametrize("path", ["/prompt", "/interrupt", "/download"])
async def test_a_charset_other_than_utf8_is_415(
    with_cache: RunningSidecar, http: aiohttp.ClientSession, path: str
) -> None:
    headers = {"Content-Type": 'application/json; charset="bogus"'}
    status, body = await post_raw(http, with_cache.url + path, b"{}", headers)
    assert status == 415, body
    assert "charset 'bogus'" in message_of(body)


@pytest.mark.parametrize("path", ["/prompt", "/interrupt", "/download"])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_400(
    with_cache: RunningSidecar, http: aiohttp.ClientSession, path: str
) -> None:
    headers = {**JSON, "Content-Encoding": "deflate"}
    status, body = await post_raw(http, with_cache.url + path, b'{"not": "deflate"}', headers)
    assert status == 400, body
    assert "not valid deflate data" in body["error"]


async def test_gzip_and_deflate_bodies_are_decompressed_and_bombs_are_413(
    with_cache: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    raw = json.dumps({"id": "nothing-running"}).encode()
    for encoding, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        headers = {**JSON, "Content-Encoding": encoding}
        status, body = await post_raw(http, f"{with_cache.url}/interrupt", packed, headers)
        assert (status, body) == (404, {"id": "nothing-running", "interrupted": "failed"})
    bomb = zlib.compress(b'{"id": "' + b"x" * (with_cache.settings.max_body_bytes + 10) + b'"}', 9)
    status, body = await post_raw(
        http, f"{with_cache.url}/interrupt", bomb, {**JSON, "Content-Encoding": "deflate"}
    )
    assert status == 413, body
    status, body = await post_raw(
        http, f"{with_cache.url}/interrupt", raw, {**JSON, "Content-Encoding": "br"}
    )
    assert status == 415, body


def surrogate_prompt(where: str) -> bytes:
    prefix = "ok\\ud800" if where == "prefix" else "ok"
    node_id = "2\\udfff" if where == "node" else "2"
    image = "pic\\ud83d.png" if where == "image" else "pic.png"
    load = '"1": {"class_type": "LoadImage", "inputs": {"image": "IMAGE"}}'.replace("IMAGE", image)
    save = '"ID": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "PREFIX"}}'
    return (
        '{"prompt": {' + load + ", " + save.replace("ID", node_id).replace("PREFIX", prefix) + "}}"
    ).encode()


@pytest.mark.parametrize(
    ("where", "location"),
    [
        ("prefix", "prompt.2.inputs.filename_prefix"),
        ("node", "prompt.2\\udfff"),
        ("image", "prompt.1.inputs.image"),
    ],
)
async def test_lone_surrogates_are_refused_before_comfyui_runs_anything(
    with_cache: RunningSidecar,
    standin: RunningStandin,
    http: aiohttp.ClientSession,
    where: str,
    location: str,
) -> None:
    (with_cache.settings.input_dir / "pic.png").write_bytes(b"")
    status, body = await post_raw(http, f"{with_cache.url}/prompt", surrogate_prompt(where))
    assert status == 400, body
    assert "lone UTF-16 surrogate" in body["error"]
    assert body["location"] == location
    async with http.get(f"{standin.url}/history") as response:
        assert await response.json() == {}  # nothing was queued


async def test_valid_surrogate_pairs_still_pass(
    with_cache: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    raw = json.dumps({"prompt": empty_image_prompt(prefix="smile-\U0001f600"), "id": "pair"}).encode()
    assert b"\\ud83d\\ude00" in raw
    status, body = await post_raw(http, f"{with_cache.url}/prompt", raw)
    assert status == 200, body
    assert body["filenames"] == ["pair_smile-\U0001f600_00001_.png"]


async def test_a_surrogate_in_the_interrupt_id_is_400(
    with_cache: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    status, body = await post_raw(http, f"{with_cache.url}/interrupt", b'{"id": "\\udc00"}')
    assert (status, body["location"]) == (400, "id")


async def test_prompts_over_the_node_limit_are_400(
    with_cache: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    prompt = {str(i): {"class_type": "EmptyImage", "inputs": {}} for i in range(51)}
    status, body = await post_raw(http, f"{with_cache.url}/prompt", json.dumps({"prompt": prompt}).encode())
    assert status == 400, body
    assert body == {
        "error": "Bad Request: prompt has 51 nodes (at most 50, MAX_PROMPT_NODES)",
        "location": "prompt",
    }


async def test_bodies_with_too_many_values_are_413_before_parsing(
    with_cache: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    raw = b'{"prompt": {}, "x": [' + b"0," * 250_001 + b"0]}"
    status, body = await post_raw(http, f"{with_cache.url}/prompt", raw)
    assert status == 413, body
    assert "too many JSON values" in body["message"]


async def test_a_body_that_stops_arriving_is_408(with_cache: RunningSidecar) -> None:
    reader, writer = await asyncio.open_connection(HOST, int(with_cache.url.rsplit(":", 1)[1]))
    try:
        writer.write(
            b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert time.monotonic() - started < 3
    finally:
        writer.close()


async def test_idle_and_header_less_connections_are_closed(with_cache: RunningSidecar) -> None:
    port = int(with_cache.url.rsplit(":", 1)[1])
    idle = await asyncio.open_connection(HOST, port)
    slow = await asyncio.open_connection(HOST, port)
    slow[1].write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    started = time.monotonic()
    for reader, writer in (idle, slow):
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        finally:
            writer.close()
    assert time.monotonic() - started < 4


async def metric_lines(http: aiohttp.ClientSession, url: str, name: str) -> list[str]:
    async with http.get(f"{url}/metrics") as response:
        return [line for line in (await response.text()).splitlines() if line.startswith(name)]


async def test_a_client_that_aborts_mid_body_is_a_499_without_traceback(
    with_cache: RunningSidecar, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    _, writer = await asyncio.open_connection(HOST, int(with_cache.url.rsplit(":", 1)[1]))
    writer.write(
        b"POST /prompt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.transport.abort()
    await asyncio.sleep(0.2)
    lines = await metric_lines(http, with_cache.url, "comfyui_api_requests_total")
    assert 'comfyui_api_requests_total{code="499",route="/prompt"} 1.0' in lines
    assert not any('code="500"' in line for line in lines)
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


async def test_nothing_above_leaves_a_500_in_the_metrics(
    with_cache: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    for path in ("/prompt", "/interrupt", "/download"):
        for raw in (nested(5_000), b'{"a": ' + b"1" * 5000 + b"}", b'{"id": "\\ud800"}'):
            with contextlib.suppress(aiohttp.ClientError):
                await post_raw(http, with_cache.url + path, raw)
    lines = await metric_lines(http, with_cache.url, "comfyui_api_requests_total")
    assert [line for line in lines if 'code="5' in line and "/ready" not in line] == []


@pytest.mark.parametrize(
    ("auth", "field"),
    [
        ({"type": "header", "header_name": "X-Key\r\nInjected: 1", "header_value": "v"}, "header_name"),
        ({"type": "header", "header_name": "X-Key", "header_value": "v\r\nInjected: 1"}, "header_value"),
        ({"type": "header", "header_name": "X-Key", "header_value": "v\n"}, "header_value"),
        ({"type": "bearer", "token": "t\rX"}, "token"),
    ],
)
async def test_cr_lf_in_auth_headers_is_400_on_prompt_and_download(
    with_cache: RunningSidecar, http: aiohttp.ClientSession, auth: dict[str, str], field: str
) -> None:
    prompt = {"prompt": empty_image_prompt(), "credentials": [{"url_pattern": "**", "auth": auth}]}
    status, body = await post_raw(http, f"{with_cache.url}/prompt", json.dumps(prompt).encode())
    assert status == 400, body
    assert body["location"] == f"credentials.0.auth.{auth['type']}.{field}"
    assert "CR" in body["error"]
    download = {"url": "https://example.invalid/x.bin", "model_type": "loras", "wait": True, "auth": auth}
    status, body = await post_raw(http, f"{with_cache.url}/download", json.dumps(download).encode())
    assert status == 400, body
    assert "CR" in body["error"]


async def test_convert_output_over_the_pixel_limit_is_422_and_leaves_no_file(
    standin: RunningStandin, http: aiohttp.ClientSession
) -> None:
    async with run_sidecar(sidecar_settings(standin.url, standin.dirs, convert_max_pixels=32 * 32 - 1)) as sc:
        request = {"prompt": empty_image_prompt(32, 32), "convert_output": {"format": "webp"}}
        status, body = await post_raw(http, f"{sc.url}/prompt", json.dumps(request).encode())
        assert status == 422, body
        assert body["location"] == "convert_output"
        assert "32x32 = 1024 pixels, more than CONVERT_MAX_PIXELS (1023)" in body["error"]
        assert list(standin.dirs.output.rglob("*.png")) == []
        request["prompt"] = empty_image_prompt(31, 32)
        status, body = await post_raw(http, f"{sc.url}/prompt", json.dumps(request).encode())
        assert status == 200, body
