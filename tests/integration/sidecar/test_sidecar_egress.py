"""Every outbound path of the sidecar goes through one egress policy.

ComfyUI's own address (the stand-in's host:port), loopback, link-local and metadata addresses are refused in
every spelling (decimal, octal, hex, short, IPv6-mapped, a DNS name resolving there, a redirect there) on
downloads for prompts, POST /download (wait true and false), the manifest, http uploads, legacy and v2
webhooks (success and failure) and system webhooks; an allowed receiver is reached when a setting allows it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from comfyui_sidecar.app import build_fetcher
from comfyui_sidecar.cache import ModelCache
from comfyui_sidecar.cache.manifest import ManifestPreload
from comfyui_standin.testing import RunningStandin, run_standin
from sidecar_harness import (
    HOST,
    empty_image_prompt,
    run_sidecar,
    run_webhook_receiver,
    sidecar_settings,
    wait_until,
)


def comfy_spellings(port: int) -> list[str]:
    """ComfyUI's own address (the stand-in on 127.0.0.1:port), written every way a resolver accepts."""
    return [
        f"http://127.0.0.1:{port}",
        f"http://2130706433:{port}",  # decimal
        f"http://0177.0.0.1:{port}",  # octal
        f"http://0x7f000001:{port}",  # hex
        f"http://127.1:{port}",  # short
        f"http://127.0.0.2:{port}",  # another loopback address, same port
        f"http://[::ffff:127.0.0.1]:{port}",  # IPv6-mapped
        f"http://[::ffff:7f00:1]:{port}",
        f"http://localhost:{port}",  # a DNS name resolving there
        f"http://0.0.0.0:{port}",
    ]


NEVER = [
    "http://169.254.169.254",
    "http://[fd00:ec2::254]",
    "http://[fe80::1]",
    "http://[::ffff:169.254.169.254]",
]


class Spy:
    """A server on an allowed loopback port: counts requests and redirects where asked."""

    def __init__(self) -> None:
        self.url = ""
        self.hits: list[str] = []

    def redirect_to(self, target: str) -> str:
        return f"{self.url}/redirect?to={quote(target, safe='')}"


@pytest.fixture
async def spy() -> AsyncIterator[Spy]:
    found = Spy()

    async def handle(request: web.Request) -> web.StreamResponse:
        found.hits.append(request.path)
        if request.path == "/redirect":
            return web.Response(status=307, headers={"Location": request.query["to"]})
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0" * 32, content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    found.url = f"http://{HOST}:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield found
    await runner.cleanup()


@pytest.fixture
async def comfy(tmp_path: Path) -> AsyncIterator[RunningStandin]:
    async with run_standin(tmp_path / "comfy") as running:
        yield running


def forbidden_targets(comfy: RunningStandin, spy: Spy, path: str) -> list[str]:
    port = int(comfy.url.rsplit(":", 1)[1])
    direct = [f"{base}{path}" for base in comfy_spellings(port)] + [f"{base}{path}" for base in NEVER]
    redirects = [
        spy.redirect_to(f"http://127.0.0.1:{port}{path}"),
        spy.redirect_to(f"http://[::1]:{port}{path}"),
    ]
    return [*direct, *redirects]


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json()


def refused(message: str) -> bool:
    return any(
        part in message
        for part in ("never allowed", "DOWNLOAD_ALLOW_NETWORKS", "WEBHOOK_ALLOW_NETWORKS", "Invalid URL")
    )


async def test_webhook_targets_are_refused_before_anything_runs(comfy: RunningStandin, spy: Spy) -> None:
    settings = sidecar_settings(comfy.url, comfy.dirs)
    async with run_sidecar(settings) as sc, aiohttp.ClientSession() as http:
        for target in forbidden_targets(comfy, spy, "/interrupt"):
            if "/redirect" in target:
                continue  # redirects are never followed for webhooks: see the next test
            for field in ("webhook", "webhook_v2"):
                status, body = await post(
                    http, f"{sc.url}/prompt", {"prompt": empty_image_prompt(), field: target}
                )
                assert status == 400, (target, body)
                assert body["location"] == field
                assert refused(body["error"]), (target, body)
        async with http.get(f"{comfy.url}/history") as response:
            assert await response.json() == {}  # nothing ran


async def test_a_refused_prompt_cannot_interrupt_or_queue_through_its_failure_webhook(
    comfy: RunningStandin, spy: Spy
) -> None:
    """The attack of issue 11: a prompt refused by the sidecar, its failure webhook aimed at ComfyUI's
    /interrupt (killing another client's prompt) or /prompt (running the refused prompt)."""
    settings = sidecar_settings(comfy.url, comfy.dirs)
    running = empty_image_prompt()
    running["3"] = {"class_type": "StandinSleep", "inputs": {"image": ["1", 0], "seconds": 1.5, "steps": 15}}
    running["2"]["inputs"]["images"] = ["3", 0]
    no_output = {"1": empty_image_prompt()["1"]}  # refused: no output node
    async with run_sidecar(settings) as sc, aiohttp.ClientSession() as http:
        victim = asyncio.create_task(post(http, f"{sc.url}/prompt", {"prompt": running, "id": "victim"}))
        await asyncio.sleep(0.3)
        for path in ("/interrupt", "/prompt"):
            for target in (f"{comfy.url}{path}", spy.redirect_to(f"{comfy.url}{path}")):
                status, body = await post(
                    http, f"{sc.url}/prompt", {"prompt": no_output, "webhook_v2": target, "webhook": target}
                )
                assert status == 400, body
        status, body = await victim
        assert status == 200, body  # not interrupted
    # the direct targets were refused at accept; the redirecting one (an allowed receiver) got the failure
    # webhook, answered 307, and was not followed...
    assert set(spy.hits) == {"/redirect"}
    async with aiohttp.ClientSession() as http, http.get(f"{comfy.url}/history") as response:
        assert len(await response.json()) == 1  # ...and the refused prompt never reached ComfyUI


async def test_redirects_are_not_followed_by_webhooks(comfy: RunningStandin, spy: Spy) -> None:
    settings = sidecar_settings(comfy.url, comfy.dirs)
    async with run_sidecar(settings) as sc, aiohttp.ClientSession() as http:
        target = spy.redirect_to(f"{comfy.url}/interrupt")
        status, body = await post(
            http, f"{sc.url}/prompt", {"prompt": empty_image_prompt(), "webhook_v2": target}
        )
        assert status == 202, body
        await wait_until(lambda: len(spy.hits) >= 3)  # three attempts, each answered 307, none followed
        await asyncio.sleep(0.3)
    assert spy.hits == ["/redirect"] * 3


async def test_downloads_for_prompts_are_refused(comfy: RunningStandin, spy: Spy) -> None:
    settings = sidecar_settings(
        comfy.url, comfy.dirs, cache_dir=comfy.dirs.base / "cache", download_attempts=1
    )
    async with run_sidecar(settings, fetcher=build_fetcher(settings)) as sc, aiohttp.ClientSession() as http:
        for target in forbidden_targets(comfy, spy, "/view?filename=x.png"):
            prompt = empty_image_prompt()
            prompt["5"] = {"class_type": "LoadImage", "inputs": {"image": target}}
            status, body = await post(http, f"{sc.url}/prompt", {"prompt": prompt})
            assert status == 400, (target, body)
            assert body["location"] == "prompt.5.inputs.image"
            assert refused(body["error"]), (target, body)
        # an allowed file server is reached
        prompt = empty_image_prompt()
        prompt["5"] = {"class_type": "LoadImage", "inputs": {"image": f"{spy.url}/ok.png"}}
        status, body = await post(http, f"{sc.url}/prompt", {"prompt": prompt})
        assert status == 200, body


@pytest.mark.parametrize("wait", [True, False])
async def test_download_route_refuses_with_wait_true_and_false(
    comfy: RunningStandin, spy: Spy, wait: bool
) -> None:
    settings = sidecar_settings(
        comfy.url, comfy.dirs, cache_dir=comfy.dirs.base / "cache", download_attempts=1
    )
    async with run_sidecar(settings, fetcher=build_fetcher(settings)) as sc, aiohttp.ClientSession() as http:
        for target in forbidden_targets(comfy, spy, "/models/x.safetensors"):
            body = {"url": target, "model_type": "checkpoints", "wait": wait}
            status, answer = await post(http, f"{sc.url}/download", body)
            if wait or "/redirect" not in target:
                assert status == 400, (target, answer)
                assert refused(answer["error"]), (target, answer)
            else:
                assert status == 202  # the redirect is only seen when fetching: refused there
        await asyncio.sleep(0.3)
        assert not list((settings.cache_dir / "models" / "checkpoints").iterdir())


async def test_manifest_downloads_are_refused(comfy: RunningStandin, spy: Spy, tmp_path: Path) -> None:
    targets = forbidden_targets(comfy, spy, "/models/m.safetensors")
    manifest = {
        "models": {
            "before_start": [
                {"url": t, "local_path": f"loras/m{i}.safetensors"} for i, t in enumerate(targets)
            ]
        }
    }
    settings = sidecar_settings(
        comfy.url,
        comfy.dirs,
        cache_dir=tmp_path / "cache",
        download_attempts=1,
        manifest_json=json.dumps(manifest),
    )
    cache = build_fetcher(settings)
    assert isinstance(cache, ModelCache)
    run = ManifestPreload.load(cache, settings)
    try:
        await cache.start()
        await run.preload()
    finally:
        await cache.close()
    assert len(run.errors) == len(targets)
    assert all(refused(e) for e in run.errors), run.errors


async def test_upload_targets_are_refused_with_a_400_not_a_502(comfy: RunningStandin, spy: Spy) -> None:
    settings = sidecar_settings(comfy.url, comfy.dirs)
    async with run_sidecar(settings) as sc, aiohttp.ClientSession() as http:
        for target in forbidden_targets(comfy, spy, "/upload"):
            if "/redirect" in target:
                continue  # uploads follow no redirect
            for asynchronous in (False, True):
                body = {
                    "prompt": empty_image_prompt(),
                    "http_upload": {"url_prefix": target, "async": asynchronous},
                }
                status, answer = await post(http, f"{sc.url}/prompt", body)
                assert status == 400, (target, answer)
                assert answer["location"] == "http_upload.url_prefix"
                assert refused(answer["error"]), (target, answer)
        async with http.get(f"{comfy.url}/history") as response:
            assert await response.json() == {}


async def test_system_webhooks_to_comfyui_are_refused(
    comfy: RunningStandin, caplog: pytest.LogCaptureFixture
) -> None:
    settings = sidecar_settings(
        comfy.url, comfy.dirs, system_webhook_url=f"{comfy.url}/interrupt", system_webhook_events="all"
    )
    with caplog.at_level("ERROR", logger="comfyui_sidecar.webhooks"):
        async with run_sidecar(settings) as sc, aiohttp.ClientSession() as http:
            status, _ = await post(http, f"{sc.url}/prompt", {"prompt": empty_image_prompt()})
            assert status == 200
            await wait_until(lambda: "ComfyUI's own address" in caplog.text)


async def test_loopback_is_refused_by_default_and_receivers_are_reached_when_a_setting_allows(
    comfy: RunningStandin,
) -> None:
    async with run_webhook_receiver() as receiver:
        strict = sidecar_settings(comfy.url, comfy.dirs, download_allow_networks=[])
        async with run_sidecar(strict) as sc, aiohttp.ClientSession() as http:
            status, body = await post(
                http,
                f"{sc.url}/prompt",
                {"prompt": empty_image_prompt(), "webhook_v2": f"{receiver.url}/hook"},
            )
            assert status == 400
            assert "it is a loopback address (add it to WEBHOOK_ALLOW_NETWORKS" in body["error"]
        # WEBHOOK_ALLOW_NETWORKS opens the receiver to webhooks only (the in-cluster case), not to uploads
        hooks_only = sidecar_settings(
            comfy.url, comfy.dirs, download_allow_networks=[], webhook_allow_networks=["127.0.0.1/32"]
        )
        async with run_sidecar(hooks_only) as sc, aiohttp.ClientSession() as http:
            status, _ = await post(
                http,
                f"{sc.url}/prompt",
                {"prompt": empty_image_prompt(), "webhook_v2": f"{receiver.url}/hook"},
            )
            assert status == 202
            await receiver.wait_for(1)
            status, body = await post(
                http,
                f"{sc.url}/prompt",
                {"prompt": empty_image_prompt(), "http_upload": {"url_prefix": f"{receiver.url}/up"}},
            )
            assert status == 400
            assert "DOWNLOAD_ALLOW_NETWORKS" in body["error"]


@pytest.mark.parametrize("where", ["comfyui", "redirect to comfyui", "loopback, not allowed"])
async def test_the_warmup_prompt_url_is_fetched_under_the_download_policy(
    comfy: RunningStandin, spy: Spy, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    """WARMUP_PROMPT_URL goes through the download client: a refused one never ready, /health 500."""
    own = f"{comfy.url}/prompt"
    url = {"comfyui": own, "redirect to comfyui": spy.redirect_to(own)}.get(where, f"{spy.url}/warmup.json")
    allow = [] if where.startswith("loopback") else ["127.0.0.1/32"]
    settings = sidecar_settings(comfy.url, comfy.dirs, warmup_prompt_url=url, download_allow_networks=allow)
    with caplog.at_level("ERROR", logger="comfyui_sidecar.lifecycle"):
        async with run_sidecar(settings, wait_ready=False) as sc, aiohttp.ClientSession() as http:
            await wait_until(lambda: "cannot load the warmup prompt" in caplog.text)
            async with http.get(f"{sc.url}/health") as answer:
                assert answer.status == 500
            async with http.get(f"{sc.url}/ready") as answer:
                assert answer.status == 503
    assert "cannot load the warmup prompt: " in caplog.text
    assert ("loopback" if where.startswith("loopback") else "ComfyUI's own address") in caplog.text
    assert spy.hits == (["/redirect"] if where.startswith("redirect") else [])
