"""Held v2 jobs (pure parts): bounds, merging copies, expiry, the journal, rendering and id rewriting; the
router's own dispatch counting and the instance-wide activity figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfy_low.models import Job as SdkJob
from comfyui_router.activity import merge
from comfyui_router.held import LABEL, HeldFull, HeldJob, HeldStore, Journal, render, rewriter
from comfyui_router.replicas import Replica
from comfyui_sidecar.placement import ComfyUIPlacement, Placement
from comfyui_sidecar.v2.links import External

EXT = External("http://router.example:3000", "")


def job(job_id: str, created: float = 1000.0, **fields: object) -> HeldJob:
    values: dict[str, object] = {
        "id": job_id,
        "created": created,
        "updated": created,
        "workflow": {"1": {"class_type": "EmptyImage", "inputs": {}}},
        "size": 100,
    }
    values.update(fields)
    return HeldJob.model_validate(values)


def store(tmp_path: Path | None = None, **limits: float) -> HeldStore:
    values = {"max_jobs": 3, "max_bytes": 1000, "hold_timeout_s": 60.0, "retention_s": 3600.0, **limits}
    return HeldStore(
        max_jobs=int(values["max_jobs"]),
        max_bytes=int(values["max_bytes"]),
        hold_timeout_s=values["hold_timeout_s"],
        retention_s=values["retention_s"],
        journal=Journal(tmp_path) if tmp_path else None,
    )


def test_held_jobs_are_bounded_in_number_with_the_waiting_requests_and_in_bytes() -> None:
    held = store()
    held.admit(100, waiting=0)
    held.put(job("job_1"))
    held.put(job("job_2", created=1001.0))
    held.admit(100, waiting=0)
    with pytest.raises(HeldFull, match="MAX_HELD_JOBS 3"):
        held.admit(100, waiting=1)  # two held + one waiting request
    with pytest.raises(HeldFull, match="MAX_HELD_BYTES"):
        held.admit(801, waiting=0)
    held.put(job("job_1", status="dispatched", real_id="job_r", updated=1002.0))
    held.admit(100, waiting=1)  # a dispatched job no longer counts


def test_positions_are_first_in_first_out() -> None:
    held = store()
    for index, created in enumerate((1002.0, 1000.0, 1001.0)):
        held.put(job(f"job_{index}", created=created))
    assert [held.position(j) for j in (held.get("job_1"), held.get("job_2"), held.get("job_0"))] == [1, 2, 3]
    assert [j.id for j in held.held()] == ["job_1", "job_2", "job_0"]


def test_copies_merge_by_state_then_time_and_dispatched_beats_a_concurrent_cancel() -> None:
    held = store()
    assert held.put(job("job_1"))
    assert not held.put(job("job_1"))  # the same copy again changes nothing
    assert held.put(job("job_1", status="canceled", updated=1005.0))
    assert not held.put(job("job_1", updated=1010.0))  # held never comes back over canceled
    assert held.put(job("job_1", status="dispatched", real_id="job_r", updated=1001.0))
    stored = held.get("job_1")
    assert stored is not None
    assert stored.status == "dispatched"
    assert stored.workflow is None


def test_a_job_held_past_the_timeout_fails_and_records_go_after_their_retention() -> None:
    held = store()
    held.put(job("job_1", created=1000.0))
    assert held.expire(1059.0) == []
    (failed,) = held.expire(1060.0)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error["code"] == "no_replica_ready"
    assert held.get("job_1") is not None
    held.expire(1000.0 + 3600.0)
    assert held.get("job_1") is None


def test_the_journal_survives_a_restart_without_the_partner_key(tmp_path: Path) -> None:
    first = store(tmp_path)
    first.put(job("job_1", extra_data={"api_key_comfy_org": "secret-key"}, labels={"team": "blue"}))
    first.put(job("job_2", status="canceled"))
    written = b"".join(path.read_bytes() for path in tmp_path.glob("*.json"))
    assert b"secret-key" not in written
    assert not list(tmp_path.glob(".held-*"))  # no temporary file left behind
    second = store(tmp_path)
    assert second.load_journal() == 2
    restored = second.get("job_1")
    assert restored is not None
    assert restored.labels == {"team": "blue"}
    assert restored.extra_data is None
    (tmp_path / "job_bad.json").write_text("{not json")
    assert store(tmp_path).load_journal() == 2  # an unreadable file is skipped


def test_a_held_job_renders_as_a_queued_v2_job_the_sdk_accepts() -> None:
    held = store()
    held.put(job("job_1", labels={"team": "blue"}))
    body = render(held.get("job_1"), 1, EXT, 3600.0)  # type: ignore[arg-type]
    SdkJob.model_validate(body)
    assert body["status"] == "queued"
    assert body["queue_position"] == 1
    assert body["urls"]["self"] == "/api/v2/jobs/job_1"
    assert body["metadata"] == {"team": "blue"}
    failed = job("job_2", status="failed", error={"code": "no_replica_ready", "message": "none"})
    body = render(failed, None, EXT, 3600.0)
    SdkJob.model_validate(body)
    assert body["status"] == "failed"
    assert body["error"]["code"] == "no_replica_ready"


def test_answers_about_the_replica_job_read_as_answers_about_the_held_id() -> None:
    rewrite = rewriter("job_real", "job_held")
    body = {
        "id": "job_real",
        "urls": {"self": "/api/v2/jobs/job_real"},
        "outputs": [{"id": "out_x", "job_id": "job_real"}],
        "metadata": {"team": "blue", LABEL: "job_held"},
    }
    rewritten = json.loads(rewrite(json.dumps(body).encode()))
    assert rewritten["id"] == "job_held"
    assert rewritten["urls"]["self"] == "/api/v2/jobs/job_held"
    assert rewritten["outputs"] == [{"id": "out_x", "job_id": "job_held"}]
    assert rewritten["metadata"] == {"team": "blue"}
    event = b'event: output\ndata: {"id":"out_x","job_id":"job_real"}\n\n'
    assert rewrite(event) == event.replace(b"job_real", b"job_held")


def placement(queue: int, loaded: list[str]) -> Placement:
    return Placement(
        pod="p",
        ready=True,
        draining=False,
        queue_depth=queue,
        max_queue_depth=0,
        comfyuis=[ComfyUIPlacement(index=0, up=True, queue_depth=queue, loaded_models=loaded)],
    )


def test_dispatches_count_until_a_report_made_after_them() -> None:
    replica = Replica("r", "http://r")
    replica.reported(placement(0, []), asked_at=0.0, now=0.1)
    replica.dispatched({"checkpoints/a"}, now=1.0)
    replica.dispatched({"checkpoints/a"}, now=1.5)
    view = replica.view()
    assert view.queue_depth == 2
    assert "checkpoints/a" in view.loaded
    replica.reported(placement(1, []), asked_at=1.2, now=1.3)  # asked after the first dispatch only
    assert replica.view().queue_depth == 2  # 1 reported + the one sent after the poll was asked
    assert "checkpoints/a" in replica.view().loaded  # still on its way
    replica.reported(placement(0, ["checkpoints/b"]), asked_at=2.0, now=2.1)
    assert replica.view().queue_depth == 0
    assert replica.view().loaded == frozenset({"checkpoints/b"})  # idle: the report is the truth
    replica.gone.set()
    assert not replica.view().usable


def test_the_instance_activity_counts_each_held_job_once_over_the_routers() -> None:
    report = merge(
        [
            {
                "held_ids": ["job_1", "job_2"],
                "waiting": 1,
                "inflight": 0,
                "idle_seconds": 0,
                "replicas_ready": 0,
            },
            {"held_ids": ["job_2"], "waiting": 2, "inflight": 3, "idle_seconds": 7.5, "replicas_ready": 1},
        ]
    )
    assert (report.held, report.waiting, report.inflight) == (2, 3, 3)
    assert report.idle_seconds == 0
    assert report.routers == 2
    assert report.replicas_ready == 1


def test_a_replica_with_one_comfyui_holds_what_the_last_job_sent_there_loads() -> None:
    replica = Replica("r", "http://r")
    replica.reported(placement(0, ["checkpoints/a"]), asked_at=0.0, now=0.1)
    token = replica.dispatched({"checkpoints/b"}, now=1.0)
    assert replica.view().loaded == frozenset({"checkpoints/b"})  # a is pushed out once b has run
    replica.refused(token)  # b never reached it: a is still there
    assert replica.view().loaded == frozenset({"checkpoints/a"})
    replica.dispatched({"checkpoints/b"}, now=2.0)
    replica.reported(placement(1, ["checkpoints/a"]), asked_at=2.5, now=2.6)  # a running, b queued
    assert replica.view().loaded == frozenset({"checkpoints/b"})
