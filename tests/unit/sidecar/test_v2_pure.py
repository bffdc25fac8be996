"""Pure parts of Comfy API v2: shapes against the SDK's own models, ids, links, workflows, previews, auth."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from comfy_low.models import Asset as SdkAsset
from comfy_low.models import Job as SdkJob
from comfy_low.models import Output as SdkOutput
from comfyui_sidecar import auth
from comfyui_sidecar.job_records import Failure, OutputFile
from comfyui_sidecar.jobs import JobStore
from comfyui_sidecar.previews import parse_preview
from comfyui_sidecar.v2 import ids, render, schemas
from comfyui_sidecar.v2.errors import V2Error
from comfyui_sidecar.v2.links import HOP_HEADER, External, external
from comfyui_sidecar.v2.workflow import check_submit, find_refs, node_errors, substitute
from pydantic import ValidationError

KEY = b"test-key"
EXT = External("http://svc:3000", "")


def new_job(store: JobStore, owner: str = "a") -> Any:
    created = round(time.time(), 3)
    job_id = ids.mint(KEY, "job", owner, round(created * 1000))
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {}},
    }
    return store.new_record(job_id, "v2", "comfy-1", workflow, created=created)


# ---- shapes ------------------------------------------------------------------------------------------------
def test_a_queued_job_has_every_required_key_and_validates_as_the_sdk_job() -> None:
    store = JobStore(retention_s=3600, max_jobs=10)
    record = new_job(store)
    body = render.job(KEY, record, EXT, store.queue_position(record))
    SdkJob.model_validate(body)
    for key in ("started_at", "completed_at", "progress", "error", "queue_position"):
        assert key in body
        assert body[key] is None or key == "queue_position"
    assert body["queue_position"] == 1
    assert body["created_at"].endswith("Z")
    assert body["expires_at"].endswith("Z")


def test_a_finished_job_with_outputs_and_an_error_validates() -> None:
    store = JobStore(retention_s=3600, max_jobs=10)
    record = new_job(store)
    store.mark_running(record)
    store.add_outputs(record, [OutputFile(0, "2", "x.png", "image", "image/png", 10, time.time())])
    store.finish(
        record, "failed", Failure("node_execution_error", "boom", node_id="2", class_type="SaveImage")
    )
    body = render.job(KEY, record, EXT, None)
    job = SdkJob.model_validate(body)
    assert job.status.value == "failed"
    assert body["error"] == {
        "code": "node_execution_error",
        "message": "boom",
        "node_id": "2",
        "class_type": "SaveImage",
    }
    output = body["outputs"][0]
    SdkOutput.model_validate(output)
    assert output["hash"] is None  # required key, present even when null
    assert output["url"].startswith("http://svc:3000/api/v2/assets/out_")
    parsed = ids.decode(KEY, output["id"])
    assert parsed is not None
    assert parsed.kind == "output"
    assert ids.encode(KEY, parsed.job()) == record.id


def test_the_models_refuse_what_the_sdk_would_refuse() -> None:
    with pytest.raises(ValidationError):
        schemas.Progress(value=1.5, nodes_done=0, nodes_total=1)
    with pytest.raises(ValidationError):
        schemas.Output.model_validate(
            {
                "node_id": "1",
                "name": "x",
                "type": "picture",
                "content_type": "image/png",
                "size_bytes": 1,
                "id": "x",
                "hash": None,
                "url": "/relative",
                "url_expires_at": "2030-01-01T00:00:00Z",
            }
        )
    with pytest.raises(ValidationError):
        schemas.Job.model_validate({"id": "x", "status": "done"})


def test_asset_bodies_validate_as_the_sdk_asset() -> None:
    body = schemas.Asset(
        id="ast_x",
        hash="blake3:" + "a" * 64,
        size_bytes=3,
        content_type="image/png",
        created_at=schemas.utc(time.time()),
        url="http://h/api/v2/assets/ast_x/content",
        url_expires_at=schemas.utc(time.time() + 60),
        created_new=True,
    ).dump()
    SdkAsset.model_validate(body)
    assert "job_id" not in body  # optional and None: left out


def test_lost_jobs_read_as_expired_with_their_creation_time() -> None:
    body = render.lost_job("job_x", 1_700_000_000_000, 86400, EXT)
    job = SdkJob.model_validate(body)
    assert job.status.value == "expired"
    assert body["created_at"] == "2023-11-14T22:13:20Z"
    assert body["error"]["code"] == "job_lost"


# ---- ids ---------------------------------------------------------------------------------------------------
def test_ids_name_their_owner_and_time_and_reject_tampering() -> None:
    job_id = ids.mint(KEY, "job", "10.244.1.7", 1_700_000_000_123)
    parsed = ids.decode(KEY, job_id)
    assert parsed is not None
    assert (parsed.kind, parsed.owner, parsed.created_ms) == ("job", "10.244.1.7", 1_700_000_000_123)
    assert job_id.startswith("job_")
    assert job_id == job_id.lower()
    assert ids.decode(b"other key", job_id) is None
    for char in "abcdefghijklmnopqrstuvwxyz234567":  # every other spelling of the last character
        if char != job_id[-1]:
            assert ids.decode(KEY, job_id[:-1] + char) is None
    assert ids.decode(KEY, "job_" + job_id[4:].upper()) is None
    assert ids.decode(KEY, job_id, kinds=("asset",)) is None
    assert ids.decode(KEY, "job_") is None
    assert ids.decode(KEY, "http://evil") is None
    assert ids.decode(KEY, "x" * 1000) is None
    asset = ids.mint(KEY, "asset", "b", 5)
    assert ids.decode(KEY, asset).kind == "asset"  # type: ignore[union-attr]
    output = ids.output_id(KEY, parsed, 3)
    decoded = ids.decode(KEY, output)
    assert decoded is not None
    assert (decoded.kind, decoded.index, decoded.job()) == ("output", 3, parsed)


def test_cursors_round_trip_and_refuse_foreign_ones() -> None:
    text = ids.encode_cursor(KEY, ids.Cursor(5, "job_x"))
    assert ids.decode_cursor(KEY, text) == ids.Cursor(5, "job_x")
    assert ids.decode_cursor(b"k2", text) is None
    assert ids.decode_cursor(KEY, "garbage") is None


# ---- links -------------------------------------------------------------------------------------------------
def test_links_come_from_the_public_url_then_trusted_headers_then_the_request() -> None:
    headers = {
        "Host": "pod:3000",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "gw",
        "X-Forwarded-Prefix": "p",
    }
    assert external(
        headers, "http", public_base_url="https://x.example/a/b", trust_forwarded=False
    ) == External("https://x.example", "/a/b")
    assert external(headers, "http", public_base_url=None, trust_forwarded=True) == External(
        "https://gw", "/p"
    )
    assert external(headers, "http", public_base_url=None, trust_forwarded=False) == External(
        "http://pod:3000", ""
    )
    assert (
        external({**headers, HOP_HEADER: "1"}, "http", public_base_url=None, trust_forwarded=False).prefix
        == "/p"
    )
    assert external({"Host": "bad host/x"}, "http", public_base_url=None, trust_forwarded=False).origin == (
        "http://localhost"
    )
    assert External("https://gw", "/p").job_urls("job_1") == {
        "self": "/p/api/v2/jobs/job_1",
        "events": "/p/api/v2/jobs/job_1/events",
        "cancel": "/p/api/v2/jobs/job_1/cancel",
    }


# ---- workflows ---------------------------------------------------------------------------------------------
def test_submit_checks() -> None:
    ok = schemas.SubmitRequest(workflow={"1": {"class_type": "X", "inputs": {}}}, metadata={"team": "a"})
    assert check_submit(ok) == {"team": "a"}
    cases = [
        ({"workflow": {"nodes": [], "links": []}}, "workflow_format_ui"),
        ({"workflow": {"1": {"inputs": {}}}}, "invalid_workflow"),
        ({"workflow": {"1": {"class_type": "X"}}, "inputs": {}}, "invalid_workflow"),
        (
            {"workflow": {"1": {"class_type": "X"}}, "metadata": {f"k{i}": "v" for i in range(17)}},
            "metadata_invalid",
        ),
        ({"workflow": {"1": {"class_type": "X"}}, "metadata": {"k": "a\u202eb"}}, "metadata_invalid"),
        ({"workflow": {"1": {"class_type": "X"}}, "metadata": {"k": "x" * 257}}, "metadata_invalid"),
    ]
    for body, code in cases:
        with pytest.raises(V2Error) as caught:
            check_submit(schemas.SubmitRequest.model_validate(body))
        assert (caught.value.status, caught.value.code) == (422, code), body
    with pytest.raises(ValidationError):
        schemas.SubmitRequest.model_validate({"workflow": {}, "extra_data": {"other": "x"}})


def test_asset_references_are_found_and_replaced_anywhere() -> None:
    ref = {"__type": "core/ASSET", "info": {"id": "ast_1", "hash": "blake3:x", "file_path": "p.png"}}
    bad = {"__type": "core/ASSET", "info": "nope"}
    workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": ref, "list": [ref, {"deep": bad}]}}}
    refs = find_refs(workflow)
    assert [(r.id, r.file_path) for r in refs] == [("ast_1", "p.png"), ("ast_1", "p.png"), (None, None)]
    replaced = substitute({"1": {"inputs": {"image": ref, "list": [ref]}}}, {"ast_1": ".api-v2/h/p.png"})
    assert replaced == {"1": {"inputs": {"image": ".api-v2/h/p.png", "list": [".api-v2/h/p.png"]}}}


def test_comfy_node_errors_become_field_and_reason() -> None:
    body = {
        "node_errors": {
            "12": {
                "errors": [
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": "model",
                        "extra_info": {"input_name": "model"},
                    }
                ]
            }
        }
    }
    assert node_errors(body) == {
        "12": [{"field": "model", "reason": "required_input_missing", "message": "Required input is missing"}]
    }


# ---- preview frames ----------------------------------------------------------------------------------------
def test_preview_frames_of_both_kinds() -> None:
    jpeg = b"\xff\xd8\xff" + b"x" * 10
    legacy = (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + jpeg
    frame = parse_preview(legacy)
    assert frame is not None
    assert (frame.prompt_id, frame.content_type, frame.data) == (None, "image/jpeg", jpeg)
    meta = json.dumps({"node_id": "3", "prompt_id": "p"}).encode()
    tagged = (4).to_bytes(4, "big") + len(meta).to_bytes(4, "big") + meta + b"\x89PNG\r\n\x1a\n..."
    frame = parse_preview(tagged)
    assert frame is not None
    assert (frame.prompt_id, frame.node_id, frame.content_type) == ("p", "3", "image/png")
    assert parse_preview((3).to_bytes(4, "big") + b"text") is None
    assert parse_preview((4).to_bytes(4, "big") + (999).to_bytes(4, "big") + b"{}") is None
    assert parse_preview(b"\x00") is None


# ---- auth --------------------------------------------------------------------------------------------------
def test_which_routes_need_the_token() -> None:
    for path in (
        "/health",
        "/ready",
        "/health/comfyui",
        "/drain",
        "/metrics",
        "/docs",
        "/docs/json",
        "/api/v2/health",
    ):
        assert not auth.needs_token(path, "all")
    assert auth.needs_token("/api/v2/jobs", "v2")
    assert auth.needs_token("/internal/v2/claims/x", "v2")
    assert not auth.needs_token("/prompt", "v2")
    assert auth.needs_token("/prompt", "all")
    assert auth.bearer_matches("Bearer t0k", "t0k")
    assert auth.bearer_matches("bearer  t0k ", "t0k")
    assert not auth.bearer_matches("Basic t0k", "t0k")
    assert not auth.bearer_matches("Bearer t0k2", "t0k")
    assert not auth.bearer_matches(None, "t0k")
