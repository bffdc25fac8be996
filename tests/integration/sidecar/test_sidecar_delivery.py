"""Contract 3.5-3.7: delivery modes and webhooks, verified with the independent `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from comfyui_standin.testing import RunningStandin
from sidecar_harness import (
    RunningSidecar,
    WebhookReceiver,
    empty_image_prompt,
    run_sidecar,
    sidecar_settings,
)
from standardwebhooks.webhooks import Webhook

SECRET = base64.b64encode(b"integration-test-secret-key-32by").decode()


@pytest.fixture
async def signed_sidecar(standin: RunningStandin) -> AsyncIterator[RunningSidecar]:
    settings = sidecar_settings(standin.url, standin.dirs, webhook_secret="whsec_" + SECRET)
    async with run_sidecar(settings) as running:
        yield running


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, object]) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with http.post(f"{url}/prompt", json=body) as response:
        return response.status, await response.json()


async def test_webhook_v2_gets_202_then_one_signed_prompt_complete(
    signed_sidecar: RunningSidecar, webhooks: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    body = {"prompt": empty_image_prompt(batch=2), "id": "wh-1", "webhook_v2": f"{webhooks.url}/v2"}
    status, answer = await post(http, signed_sidecar.url, body)
    assert status == 202
    assert answer["status"] == "ok"
    assert "images" not in answer
    [delivery] = await webhooks.wait_for(1)
    payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert Webhook("whsec_" + SECRET).verify(delivery.body, delivery.headers) == payload
    assert delivery.headers["webhook-id"] == "wh-1"
    assert abs(int(delivery.headers["webhook-timestamp"]) - time.time()) < 30
    assert list(payload)[:3] == ["type", "timestamp", "prompt"]
    assert payload["type"] == "prompt.complete"
    assert payload["id"] == "wh-1"
    assert payload["filenames"] == ["wh-1_test_00001_.png", "wh-1_test_00002_.png"]
    assert len(payload["images"]) == 2
    assert payload["stats"]["total_time"] >= 0
    await asyncio.sleep(0.2)
    assert len(webhooks.received) == 1


async def test_legacy_webhook_gets_one_output_complete_per_file(
    sidecar: RunningSidecar, webhooks: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    body = {"prompt": empty_image_prompt(batch=2), "id": "legacy", "webhook": f"{webhooks.url}/legacy"}
    status, _answer = await post(http, sidecar.url, body)
    assert status == 202
    received = await webhooks.wait_for(2)
    payloads = sorted((item.json() for item in received), key=lambda p: p["filename"])
    assert [p["event"] for p in payloads] == ["output.complete", "output.complete"]
    assert [p["filename"] for p in payloads] == ["legacy_test_00001_.png", "legacy_test_00002_.png"]
    assert all(p["id"] == "legacy" and base64.b64decode(p["image"])[:4] == b"\x89PNG" for p in payloads)
    assert "webhook-signature" not in received[0].headers
    assert "upload_time" not in payloads[0]["stats"]


async def test_execution_failure_sends_prompt_failed(
    signed_sidecar: RunningSidecar, webhooks: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    prompt = empty_image_prompt()
    prompt["3"] = {"class_type": "StandinFail", "inputs": {"message": "nope", "image": ["1", 0]}}
    prompt["2"]["inputs"]["images"] = ["3", 0]
    status, _ = await post(
        http, signed_sidecar.url, {"prompt": prompt, "id": "f1", "webhook_v2": webhooks.url}
    )
    assert status == 202
    [delivery] = await webhooks.wait_for(1)
    payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert payload["type"] == "prompt.failed"
    assert payload["id"] == "f1"
    assert "nope" in payload["error"]
    assert set(payload) == {"type", "timestamp", "id", "prompt", "error"}


async def test_preprocessing_failure_answers_400_and_sends_prompt_failed(
    signed_sidecar: RunningSidecar, webhooks: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "../escape.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}},
    }
    status, answer = await post(
        http, signed_sidecar.url, {"prompt": prompt, "id": "pre", "webhook_v2": webhooks.url}
    )
    assert status == 400
    assert answer["location"] == "prompt.1.inputs.image"
    [delivery] = await webhooks.wait_for(1)
    payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert payload["type"] == "prompt.failed"
    assert payload["error"] == answer["error"]


async def test_credentials_are_redacted_in_the_echo_and_webhooks(
    signed_sidecar: RunningSidecar, webhooks: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    credentials = [{"url_pattern": "https://x/**", "auth": {"type": "bearer", "token": "very-secret-token"}}]
    body = {"prompt": empty_image_prompt(), "credentials": credentials, "webhook_v2": webhooks.url}
    status, answer = await post(http, signed_sidecar.url, body)
    assert status == 202
    assert answer["credentials"] == [
        {"url_pattern": "https://x/**", "auth": {"type": "bearer", "token": "[redacted]"}}
    ]
    [delivery] = await webhooks.wait_for(1)
    assert b"very-secret-token" not in delivery.body


async def test_webhook_target_down_is_retried_boundedly_then_logged(
    standin: RunningStandin,
    webhooks: WebhookReceiver,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = sidecar_settings(standin.url, standin.dirs, prompt_webhook_retries=3, webhook_secret=SECRET)
    webhooks.fail_times = 100
    caplog.set_level(logging.INFO, logger="comfyui_sidecar.webhooks")
    async with run_sidecar(settings) as sc:
        started = time.monotonic()
        status, _ = await post(http, sc.url, {"prompt": empty_image_prompt(), "webhook_v2": webhooks.url})
        assert status == 202
        assert time.monotonic() - started < 2  # the answer never waits for deliveries
        await asyncio.wait_for(_until(lambda: "failed after 3 attempts" in caplog.text), 10)
        assert webhooks.attempts == 3
        async with http.get(f"{sc.url}/metrics") as response:
            assert 'comfyui_api_webhook_deliveries_total{outcome="failed"} 1.0' in await response.text()
    await asyncio.sleep(0.3)
    assert webhooks.attempts == 3


async def test_webhook_retry_succeeds_with_the_same_signature(
    signed_sidecar: RunningSidecar, webhooks: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    webhooks.fail_times = 1
    status, _ = await post(
        http, signed_sidecar.url, {"prompt": empty_image_prompt(), "webhook_v2": webhooks.url}
    )
    assert status == 202
    [delivery] = await webhooks.wait_for(1)
    assert webhooks.attempts == 2
    Webhook(SECRET).verify(delivery.body, delivery.headers)


async def test_upload_without_uploads_module_fails_clearly(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    status, body = await post(
        http,
        sidecar.url,
        {"prompt": empty_image_prompt(), "http_upload": {"url_prefix": "http://127.0.0.1:9/x"}},
    )
    # nothing listens on port 9: with the placeholder and with the real uploads module this is a 502
    assert status == 502
    assert body["message"].startswith("Upload failed")


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never became true")


async def test_system_webhooks_forward_comfy_events_with_request_ids(
    standin: RunningStandin,
    webhooks: WebhookReceiver,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SYSTEM_META_cluster", "test-cluster")
    settings = sidecar_settings(
        standin.url,
        standin.dirs,
        webhook_secret=SECRET,
        system_webhook_url=f"{webhooks.url}/system",
        system_webhook_events="executed,execution_success,progress",
    )
    async with run_sidecar(settings) as sc:
        prompt = empty_image_prompt()
        prompt["3"] = {
            "class_type": "StandinSleep",
            "inputs": {"image": ["1", 0], "seconds": 0.2, "steps": 3},
        }
        prompt["2"]["inputs"]["images"] = ["3", 0]
        status, _ = await post(http, sc.url, {"prompt": prompt, "id": "sys-1"})
        assert status == 200
        await webhooks.wait_for(5)
    payloads = [Webhook(SECRET).verify(item.body, item.headers) for item in webhooks.received]
    events = [p["event"] for p in payloads]
    assert events.count("comfy.executed") == 1
    assert events.count("comfy.execution_success") == 1
    assert events.count("comfy.progress") >= 1
    assert set(events) == {"comfy.executed", "comfy.execution_success", "comfy.progress"}
    assert all(p["data"]["data"]["prompt_id"] == "sys-1" for p in payloads)
    assert payloads[0]["metadata"] == {"cluster": "test-cluster"}


@pytest.fixture
async def uploading_sidecar(standin: RunningStandin) -> AsyncIterator[RunningSidecar]:
    settings = sidecar_settings(standin.url, standin.dirs, download_allow_networks=["127.0.0.1/32"])
    async with run_sidecar(settings) as running:
        yield running


async def test_http_upload_answers_with_the_upload_urls(
    uploading_sidecar: RunningSidecar, webhooks: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    prefix = f"{webhooks.url}/bucket/run-1"
    request = {"prompt": empty_image_prompt(batch=2), "id": "up-sync", "http_upload": {"url_prefix": prefix}}
    status, body = await post(http, uploading_sidecar.url, request)
    assert status == 200, body
    assert body["filenames"] == ["up-sync_test_00001_.png", "up-sync_test_00002_.png"]
    assert body["images"] == [f"{prefix}/{name}" for name in body["filenames"]]
    assert sorted(r.path for r in webhooks.received) == [f"/bucket/run-1/{n}" for n in body["filenames"]]
    assert all(r.body.startswith(b"\x89PNG") for r in webhooks.received)


async def test_http_upload_with_async_true_answers_202_before_the_upload(
    uploading_sidecar: RunningSidecar, webhooks: WebhookReceiver, http: aiohttp.ClientSession
) -> None:
    upload = {"url_prefix": f"{webhooks.url}/bucket", "async": True}
    request = {"prompt": empty_image_prompt(), "id": "up-async", "http_upload": upload}
    status, body = await post(http, uploading_sidecar.url, request)
    assert status == 202, body
    assert body["status"] == "ok"
    assert "images" not in body
    received = await webhooks.wait_for(1)
    assert received[0].path == "/bucket/up-async_test_00001_.png"
