"""System webhooks: prompt ids rewritten to request ids, metadata from SYSTEM_META_*."""

from __future__ import annotations

import logging

import pytest
from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.egress.settings import EgressSettings
from comfyui_sidecar.system_events import SystemEvents, metadata_from, parse_events, rewrite_ids
from comfyui_sidecar.webhooks import RetryPolicy, WebhookSender


def test_prompt_ids_are_rewritten_including_progress_state_nodes() -> None:
    message = {
        "type": "progress_state",
        "data": {
            "prompt_id": "c1",
            "nodes": {"1": {"prompt_id": "c1", "state": "running"}, "2": {"value": 1}},
        },
    }
    out = rewrite_ids(message, {"c1": "api-1"}.get)
    assert out["data"]["prompt_id"] == "api-1"
    assert out["data"]["nodes"]["1"]["prompt_id"] == "api-1"
    assert message["data"]["prompt_id"] == "c1"  # the original is untouched
    unknown = rewrite_ids({"type": "status", "data": {"prompt_id": "zz"}}, {}.get)
    assert unknown["data"]["prompt_id"] == "zz"


def test_metadata_keeps_the_key_case() -> None:
    assert metadata_from({"SYSTEM_META_Region": "eu", "PATH": "/bin"}) == {"Region": "eu"}


async def test_events_for_a_down_target_wait_in_one_bounded_queue_with_one_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dropped: list[int] = []
    egress = Egress(EgressSettings(download_allow_networks=["127.0.0.1/32"]))
    try:
        sender = WebhookSender(
            egress.webhook, RetryPolicy(attempts=2, backoff_s=0.01, backoff_max_s=0.01, timeout_s=1), ""
        )
        system = SystemEvents(
            "http://127.0.0.1:1/down",
            parse_events("all"),
            {},
            sender,
            {}.get,
            max_pending=10,
            on_drop=lambda: dropped.append(1),
        )
        with caplog.at_level(logging.WARNING, logger="comfyui_sidecar.system_events"):
            for index in range(50):
                system.on_comfy_event({"type": "progress", "data": {"value": index}})
            assert sender.pending == 1  # one worker, not one retrying task per event
            assert system.pending == 10
            assert system.dropped == len(dropped) == 40
            await sender.drain(10)
        assert system.pending == 0
        assert sender.pending == 0
        assert sum("queue full" in r.getMessage() for r in caplog.records) == 1
        system.emit("comfy.status", {})  # a new burst starts a new worker
        assert sender.pending == 1
        await sender.drain(10)
    finally:
        await egress.close()
