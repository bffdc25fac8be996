"""System webhooks: prompt ids rewritten to request ids, metadata from SYSTEM_META_*."""

from __future__ import annotations

from comfyui_sidecar.system_events import metadata_from, rewrite_ids


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
