"""Comfy API v2 over raw HTTP: status codes, the error envelope, strict shapes, heartbeats, auth,
backpressure shared with the comfyui-api routes, and GET /prompt/{id}."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from comfy_low.models import Asset, ErrorEnvelope, Job
from comfy_sdk import AsyncComfy
from comfy_sdk.exceptions import Unauthorized
from sidecar_harness import wait_until
from v2_harness import Replica, empty_image, png_bytes, replicas, sdk_env, slow_image

API = "/api/v2"


@pytest.fixture
async def one(tmp_path: Path) -> AsyncIterator[Replica]:
    async with replicas(tmp_path, 1, event_heartbeat_s=0.3) as started:
        yield started[0]


async def submit(http: aiohttp.ClientSession, url: str, workflow: dict[str, Any], **headers: str) -> Any:
    async with http.post(f"{url}{API}/jobs", json={"workflow": workflow}, headers=headers) as response:
        return response.status, await response.json(), response.headers


def envelope(body: Any, code: str) -> None:
    ErrorEnvelope.model_validate(body)
    assert body["error"]["code"] == code
    assert "details" in body["error"]


async def test_submit_is_201_with_every_required_key(one: Replica, http: aiohttp.ClientSession) -> None:
    status, body, _ = await submit(http, one.url, empty_image())
    assert status == 201
    Job.model_validate(body)
    for key in ("started_at", "completed_at", "queue_position", "progress", "error", "expires_at", "urls"):
        assert key in body
    assert body["status"] in ("queued", "running", "succeeded")
    assert body["created_at"].endswith("Z")
    assert body["urls"] == {
        "self": f"{API}/jobs/{body['id']}",
        "events": f"{API}/jobs/{body['id']}/events",
        "cancel": f"{API}/jobs/{body['id']}/cancel",
    }


async def test_links_follow_the_public_base_url(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with replicas(tmp_path, 1, public_base_url="https://gw.example/comfy") as (one,):
        _, body, _ = await submit(http, one.url, empty_image())
        assert body["urls"]["self"].startswith("/comfy/api/v2/jobs/")
        await asyncio.sleep(0.3)
        async with http.get(f"{one.url}{API}/jobs/{body['id']}") as response:
            job = await response.json()
        assert job["outputs"][0]["url"].startswith("https://gw.example/comfy/api/v2/assets/out_")


async def test_forwarded_headers_are_used_only_when_trusted(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example", "X-Forwarded-Prefix": "/x"}
    async with replicas(tmp_path, 1, trust_forwarded_headers=True) as (trusting,):
        _, body, _ = await submit(http, trusting.url, empty_image(), **headers)
        assert body["urls"]["cancel"].startswith("/x/api/v2/")
    async with replicas(tmp_path / "b", 1) as (plain,):
        _, body, _ = await submit(http, plain.url, empty_image(), **headers)
        assert body["urls"]["cancel"].startswith("/api/v2/")


async def test_error_codes(one: Replica, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{one.url}{API}/jobs/job_nosuchjob") as response:
        assert response.status == 404
        envelope(await response.json(), "not_found")
    async with http.post(
        f"{one.url}{API}/jobs", data=b"{", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        envelope(await response.json(), "invalid_request")
    ui = {"nodes": [], "links": [], "last_node_id": 0}
    status, body, _ = await submit(http, one.url, ui)
    assert status == 422
    envelope(body, "workflow_format_ui")
    bad = empty_image()
    del bad["1"]["inputs"]["width"]
    status, body, _ = await submit(http, one.url, bad)
    assert status == 422
    envelope(body, "invalid_workflow")
    assert body["error"]["details"]["node_errors"]["1"] == [
        {"field": "width", "reason": "required_input_missing", "message": "Required input is missing"}
    ]
    async with http.post(
        f"{one.url}{API}/jobs", json={"workflow": empty_image(), "webhook_url": "x"}
    ) as response:
        assert response.status == 422
        envelope(await response.json(), "invalid_workflow")
    async with http.post(
        f"{one.url}{API}/jobs", json={"workflow": empty_image(), "metadata": {"bad key!": "v"}}
    ) as response:
        assert response.status == 422
        envelope(await response.json(), "metadata_invalid")
    async with http.get(f"{one.url}{API}/jobs", params={"cursor": "forged"}) as response:
        assert response.status == 400
        envelope(await response.json(), "invalid_cursor")
    params = {f"metadata[k{i}]": "v" for i in range(4)}
    async with http.get(f"{one.url}{API}/jobs", params=params) as response:
        assert response.status == 400
        envelope(await response.json(), "invalid_metadata_filter")
    async with http.post(
        f"{one.url}{API}/jobs", json={"workflow": empty_image()}, headers={"Idempotency-Key": ""}
    ) as r:
        assert r.status == 400


async def test_a_rejected_submit_releases_its_idempotency_key(
    one: Replica, http: aiohttp.ClientSession
) -> None:
    bad = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    status, _, _ = await submit(http, one.url, bad, **{"Idempotency-Key": "k-1"})
    assert status == 422
    status, _, _ = await submit(http, one.url, empty_image(), **{"Idempotency-Key": "k-1"})
    assert status == 201
    status, body, _ = await submit(http, one.url, empty_image(), **{"Idempotency-Key": "k-1"})
    assert status == 422
    envelope(body, "idempotency_key_reuse")


async def test_cancel_is_200_and_idempotent_delete_is_204(one: Replica, http: aiohttp.ClientSession) -> None:
    _, body, _ = await submit(http, one.url, empty_image())
    await asyncio.sleep(0.3)
    for _ in range(2):
        async with http.post(f"{one.url}{body['urls']['cancel']}") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "succeeded"
    form = aiohttp.FormData()
    form.add_field("content_type", "image/png")
    form.add_field("file_path", "x.png")
    form.add_field("file", png_bytes(), filename="x.png", content_type="image/png")
    async with http.post(f"{one.url}{API}/assets", data=form) as response:
        assert response.status == 201
        asset = Asset.model_validate(await response.json())
    async with http.delete(f"{one.url}{API}/assets/{asset.id}") as response:
        assert response.status == 204
    async with http.delete(f"{one.url}{API}/assets/{asset.id}") as response:
        assert response.status == 404


async def test_an_upload_with_the_wrong_hash_is_refused(one: Replica, http: aiohttp.ClientSession) -> None:
    form = aiohttp.FormData()
    form.add_field("content_type", "image/png")
    form.add_field("file_path", "x.png")
    form.add_field("expected_hash", "blake3:" + "0" * 64)
    form.add_field("file", png_bytes(), filename="x.png", content_type="image/png")
    async with http.post(f"{one.url}{API}/assets", data=form) as response:
        assert response.status == 409
        envelope(await response.json(), "hash_mismatch")
    assert not list((one.settings.input_dir / ".api-v2" / "blobs").iterdir())


async def test_event_streams_send_heartbeats_and_end_after_the_terminal_status(
    one: Replica, http: aiohttp.ClientSession
) -> None:
    _, body, _ = await submit(http, one.url, slow_image(seconds=1.0, steps=1))
    async with http.get(f"{one.url}{body['urls']['events']}") as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-Accel-Buffering"] == "no"
        text = (await asyncio.wait_for(response.read(), 10)).decode()
    assert ": keepalive" in text  # 0.3 s heartbeat, 1 s job
    frames = [block for block in text.split("\n\n") if block.startswith("event:")]
    assert frames[-1].startswith("event: status")
    assert '"succeeded"' in frames[-1]
    assert any(frame.startswith("event: output") for frame in frames)


async def test_too_many_streams_is_429_with_retry_after(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with replicas(tmp_path, 1, max_event_streams=1) as (one,):
        _, body, _ = await submit(http, one.url, slow_image(seconds=3, steps=3))
        async with http.get(f"{one.url}{body['urls']['events']}") as first:
            assert first.status == 200
            async with http.get(f"{one.url}{body['urls']['events']}") as second:
                assert second.status == 429
                assert second.headers["Retry-After"] == "5"
                envelope(await second.json(), "too_many_streams")


async def test_auth_on_v2_and_optionally_the_comfyui_api_routes(
    tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replicas(tmp_path, 1, api_token="s3cret", api_token_scope="all") as (one,):
        for path in ("/health", "/ready", "/health/comfyui", "/metrics", f"{API}/health"):
            async with http.get(f"{one.url}{path}") as response:
                assert response.status == 200, path
        async with http.get(f"{one.url}{API}/jobs") as response:
            assert response.status == 401
            assert "WWW-Authenticate" not in response.headers
            envelope(await response.json(), "unauthorized")
        async with http.get(f"{one.url}{API}/jobs", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        async with http.post(f"{one.url}/prompt", json={"prompt": empty_image()}) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "Unauthorized"
        async with http.get(f"{one.url}{API}/jobs", headers={"Authorization": "bearer s3cret"}) as response:
            assert response.status == 200
        with sdk_env(monkeypatch, one.url):
            async with AsyncComfy() as anonymous:
                with pytest.raises(Unauthorized):
                    await anonymous.submit(anonymous.workflows.from_json(empty_image()))
        with sdk_env(monkeypatch, one.url, api_key="s3cret"):
            async with AsyncComfy() as sdk:
                job = await sdk.run(sdk.workflows.from_json(empty_image()))
                assert len(await job.outputs[0].to_bytes()) > 0
                assert [event async for event in job.events()][-1].status == "succeeded"
    async with (
        replicas(tmp_path / "v2only", 1, api_token="s3cret") as (v2only,),
        http.post(f"{v2only.url}/prompt", json={"prompt": empty_image()}) as response,
    ):
        assert response.status == 200


async def test_a_full_queue_is_429_on_both_apis_and_not_ready(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with replicas(tmp_path, 1, max_queue_depth=1, retry_after_s=1) as (one,):
        status, running, _ = await submit(http, one.url, slow_image(seconds=1.5, steps=3))
        assert status == 201
        status, body, headers = await submit(http, one.url, empty_image(), **{"Idempotency-Key": "full-1"})
        assert status == 429
        assert headers["Retry-After"] == "1"
        envelope(body, "queue_full")
        async with http.post(f"{one.url}/prompt", json={"prompt": empty_image()}) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "1"
            assert "queue is full" in (await response.json())["error"]
        async with http.get(f"{one.url}/ready") as response:
            assert response.status == 503
        started = time.monotonic()
        status, _, _ = await submit(http, one.url, empty_image(), **{"Idempotency-Key": "full-1"})
        while status == 429 and time.monotonic() - started < 10:  # the key was released by the 429
            await asyncio.sleep(0.2)
            status, _, _ = await submit(http, one.url, empty_image(), **{"Idempotency-Key": "full-1"})
        assert status == 201
        assert running["id"]


async def test_the_sdk_waits_out_a_full_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with replicas(tmp_path, 1, max_queue_depth=1, retry_after_s=1) as (one,):
        with sdk_env(monkeypatch, one.url):
            async with AsyncComfy() as sdk:
                first = await sdk.submit(sdk.workflows.from_json(slow_image(seconds=1.5, steps=3)))
                second = await sdk.run(sdk.workflows.from_json(empty_image()))  # 429s, retried by the SDK
                assert second.status == "succeeded"
                await first.result()


async def test_prompt_status_for_comfyui_api_clients(one: Replica, http: aiohttp.ClientSession) -> None:
    task = asyncio.create_task(
        http.post(f"{one.url}/prompt", json={"prompt": slow_image(1.0, 2), "id": "p-1"})
    )

    async def seen() -> Any:
        async with http.get(f"{one.url}/prompt/p-1") as response:
            return response.status == 200 and (await response.json())["status"] == "running"

    await wait_until(seen, timeout_s=5)
    async with await task as response:
        assert response.status == 200
    async with http.get(f"{one.url}/prompt/p-1") as response:
        body = await response.json()
    assert body["status"] == "succeeded"
    assert body["progress"]["value"] == 1.0
    assert body["completed_at"].endswith("Z")
    async with http.get(f"{one.url}/prompt/nope") as response:
        assert response.status == 404


async def test_metrics_count_jobs_streams_and_bytes(one: Replica, http: aiohttp.ClientSession) -> None:
    async with AsyncComfyEnv(one) as sdk:
        await sdk.run(sdk.workflows.from_json(empty_image()))
        await sdk.assets.from_bytes(png_bytes(), filename="m.png").commit()
    async with http.get(f"{one.url}/metrics") as response:
        text = await response.text()
    assert 'comfyui_api_jobs{state="succeeded"} 1.0' in text
    assert "comfyui_api_event_streams 0.0" in text
    assert 'comfyui_api_asset_bytes{kind="upload"}' in text
    assert 'comfyui_api_requests_total{code="201",route="/api/v2/jobs"}' in text


class AsyncComfyEnv:
    """AsyncComfy pointed at one replica without pytest's monkeypatch (environment restored on exit)."""

    def __init__(self, replica: Replica) -> None:
        self.patch = pytest.MonkeyPatch()
        self.patch.setenv("COMFY_BASE_URL", replica.url)
        self.patch.delenv("COMFY_API_KEY", raising=False)
        self.client = AsyncComfy()

    async def __aenter__(self) -> AsyncComfy:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        self.patch.undo()


async def test_the_timeout_counts_from_the_start_of_execution(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with replicas(tmp_path, 1, prompt_timeout_s=1.5) as (one,):
        jobs = [
            (await submit(http, one.url, slow_image(seconds=s, steps=2, prefix=p)))[1]
            for s, p in ((1.0, "a"), (1.0, "b"), (20.0, "c"))
        ]

        async def states() -> list[str]:
            out = []
            for job in jobs:
                async with http.get(f"{one.url}{job['urls']['self']}") as response:
                    out.append(await response.json())
            return out

        await wait_until(lambda: _all_terminal(states()), timeout_s=15)
        first, second, third = await states()
        assert first["status"] == second["status"] == "succeeded"  # b queued 1 s, ran 1 s: within 1.5 s
        assert third["status"] == "failed"
        assert third["error"]["code"] == "timeout"


async def _all_terminal(pending: Any) -> bool:
    return all(job["status"] in ("succeeded", "failed", "canceled", "expired") for job in await pending)


async def test_the_openapi_document_lists_the_v2_routes(one: Replica, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{one.url}/docs/json") as response:
        document = await response.json()
    paths = document["paths"]
    assert set(paths["/api/v2/jobs"]["post"]["responses"]) >= {"201", "401", "422", "429"}
    assert paths["/api/v2/jobs"]["post"]["requestBody"]
    assert set(paths["/api/v2/assets/{asset_id}"]) == {"get", "delete"}
    assert "204" in paths["/api/v2/assets/{asset_id}"]["delete"]["responses"]
    assert "/api/v2/assets/by-hash/{hash}" in paths
    assert "/prompt/{id}" in paths
    assert "429" in paths["/prompt"]["post"]["responses"]
    assert {"Job", "Asset", "ErrorEnvelope", "SubmitRequest"} <= set(document["components"]["schemas"])


async def upload(http: aiohttp.ClientSession, url: str, data: bytes, name: str) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("content_type", "application/octet-stream")
    form.add_field("file_path", name)
    form.add_field("file", data, filename=name)
    return await http.post(f"{url}{API}/assets", data=form)


async def test_the_asset_budget_evicts_the_oldest_unused_upload(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with replicas(tmp_path, 1, asset_max_bytes=3000) as (one,):
        async with await upload(http, one.url, b"a" * 2000, "a.bin") as response:
            first = await response.json()
        async with await upload(http, one.url, b"b" * 2000, "b.bin") as response:
            assert response.status == 201
        async with http.get(f"{one.url}{API}/assets/{first['id']}") as response:
            assert response.status == 404  # evicted to make room
        async with await upload(http, one.url, b"c" * 4000, "c.bin") as response:
            assert response.status == 413
            envelope(await response.json(), "payload_too_large")
        assert len(list((one.settings.input_dir / ".api-v2" / "blobs").iterdir())) == 1


async def test_the_output_budget_expires_the_oldest_finished_jobs(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with replicas(tmp_path, 1, output_max_bytes=1) as (one,):  # every older job is over budget
        jobs = []
        for color in (1, 2):
            _, body, _ = await submit(http, one.url, empty_image(width=4, height=4, color=color))
            jobs.append(body)
            await wait_until(lambda b=body: _status_is(http, one.url, b, "succeeded"), timeout_s=5)
        async with http.get(f"{one.url}{jobs[0]['urls']['self']}") as response:
            old = await response.json()
        assert old["status"] == "expired"
        assert old["error"]["code"] == "outputs_evicted"
        assert old["outputs"] == []
        async with http.get(f"{one.url}{jobs[1]['urls']['self']}") as response:
            assert (await response.json())["status"] == "succeeded"


async def _status_is(http: aiohttp.ClientSession, url: str, job: dict[str, Any], status: str) -> bool:
    async with http.get(f"{url}{job['urls']['self']}") as response:
        return bool((await response.json())["status"] == status)
