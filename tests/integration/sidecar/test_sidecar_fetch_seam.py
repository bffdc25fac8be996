"""The seam to the cache: a Fetcher resolves URL values; failures and crashes give clear answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from comfyui_sidecar.fetching import Credential, Fetch, FetchError
from comfyui_standin.testing import RunningStandin, write_png
from sidecar_harness import run_sidecar, sidecar_settings


class RecordingFetcher:
    """Resolves every URL to an existing input file and records what it was asked, and pins/unpins."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.calls: list[tuple[list[Fetch], list[str]]] = []
        self.pinned = 0

    @asynccontextmanager
    async def pin(
        self, items: Sequence[Fetch], credentials: Sequence[Credential]
    ) -> AsyncIterator[Mapping[Fetch, str]]:
        self.calls.append((list(items), [c.url_pattern for c in credentials]))
        self.pinned += 1
        try:
            yield {item: self.value for item in items}
        finally:
            self.pinned -= 1

    def routes(self) -> list[web.RouteDef]:
        async def download(request: web.Request) -> web.Response:
            return web.json_response({"status": "started"}, status=202)

        return [web.post("/download", download)]


class FailingFetcher:
    def __init__(self, error: Exception) -> None:
        self.error = error

    @asynccontextmanager
    async def pin(
        self, items: Sequence[Fetch], credentials: Sequence[Credential]
    ) -> AsyncIterator[Mapping[Fetch, str]]:
        raise self.error
        yield {}  # pragma: no cover


def url_prompt() -> dict[str, object]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "https://models.example/pic.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "f"}},
    }


async def test_fetched_values_replace_urls_and_stay_pinned_while_running(
    standin: RunningStandin, http: aiohttp.ClientSession
) -> None:
    write_png(standin.dirs.input / "cached.png", (5, 3))
    fetcher = RecordingFetcher("cached.png")
    credentials = [{"url_pattern": "https://models.example/**", "auth": {"type": "bearer", "token": "t"}}]
    async with run_sidecar(sidecar_settings(standin.url, standin.dirs), fetcher=fetcher) as sc:
        async with http.post(
            f"{sc.url}/prompt", json={"prompt": url_prompt(), "credentials": credentials}
        ) as r:
            assert r.status == 200
            body = await r.json()
        async with http.post(f"{sc.url}/download", json={}) as r:
            assert r.status == 202  # routes offered by the fetcher are registered
    assert body["prompt"]["1"]["inputs"]["image"] == "cached.png"
    assert len(body["images"]) == 1
    [(items, patterns)] = fetcher.calls
    assert items == [Fetch("https://models.example/pic.png", "1", "image", "input", "")]
    assert patterns == ["https://models.example/**"]
    assert fetcher.pinned == 0


async def test_fetch_error_is_400_with_its_message(
    standin: RunningStandin, http: aiohttp.ClientSession
) -> None:
    fetcher = FailingFetcher(FetchError("Error downloading file: Not Found"))
    settings = sidecar_settings(standin.url, standin.dirs)
    async with (
        run_sidecar(settings, fetcher=fetcher) as sc,
        http.post(f"{sc.url}/prompt", json={"prompt": url_prompt()}) as r,
    ):
        assert r.status == 400
        assert await r.json() == {"error": "Error downloading file: Not Found", "location": "prompt"}


async def test_fetch_error_names_the_failing_input_like_comfyui_api(
    standin: RunningStandin, http: aiohttp.ClientSession
) -> None:
    item = Fetch("https://models.example/pic.png", "1", "image", "input", "")
    fetcher = FailingFetcher(FetchError("Error downloading file: Not Found", item=item))
    settings = sidecar_settings(standin.url, standin.dirs)
    async with (
        run_sidecar(settings, fetcher=fetcher) as sc,
        http.post(f"{sc.url}/prompt", json={"prompt": url_prompt()}) as r,
    ):
        assert r.status == 400
        assert await r.json() == {
            "error": "Failed to download image for node 1: Error downloading file: Not Found",
            "location": "prompt.1.inputs.image",
        }


async def test_unexpected_crash_is_a_json_500(standin: RunningStandin, http: aiohttp.ClientSession) -> None:
    fetcher = FailingFetcher(RuntimeError("disk on fire"))
    async with run_sidecar(sidecar_settings(standin.url, standin.dirs), fetcher=fetcher) as sc:
        async with http.post(f"{sc.url}/prompt", json={"prompt": url_prompt()}) as r:
            assert r.status == 500
            body = await r.json()
        assert body == {
            "statusCode": 500,
            "error": "Internal Server Error",
            "message": "Internal error: RuntimeError",
        }
        async with http.post(
            f"{sc.url}/prompt", json={"prompt": {"1": {"class_type": "SaveImage", "inputs": {}}}}
        ) as r:
            assert r.status == 400  # the sidecar keeps working
