"""Job records as v2 bodies (pure): Job, Output, list items, and the Job of a job whose owner is gone."""

from __future__ import annotations

from typing import Any

from comfyui_sidecar.job_records import JobRecord, OutputFile
from comfyui_sidecar.v2 import ids, schemas
from comfyui_sidecar.v2.links import External

LOST = schemas.JobError(
    code="job_lost",
    message="the pod that ran this job restarted or was removed; its record and outputs are gone",
)


def output_id(key: bytes, record: JobRecord, index: int) -> str:
    parsed = ids.decode(key, record.id, kinds=("job",))
    if parsed is None:  # records are only made with ids minted here
        raise ValueError(f"not a v2 job id: {record.id}")
    return ids.output_id(key, parsed, index)


def output(key: bytes, record: JobRecord, item: OutputFile, ext: External) -> schemas.Output:
    asset_id = output_id(key, record, item.index)
    return schemas.Output(
        node_id=item.node_id,
        name=item.name,
        type=item.kind,
        content_type=item.content_type,
        size_bytes=item.size_bytes,
        id=asset_id,
        hash=None,
        url=ext.content_url(asset_id),
        url_expires_at=schemas.utc(record.expires),
        job_id=record.id,
    )


def progress(record: JobRecord) -> schemas.Progress | None:
    if record.status == "queued" and record.started is None:
        return None
    state = record.progress
    message = None
    if state.current_class and state.step and state.steps:
        message = f"{state.current_class} {state.step}/{state.steps}"
    return schemas.Progress(
        value=state.value(),
        nodes_done=state.nodes_done,
        nodes_total=state.nodes_total,
        current_node=state.current,
        current_node_class=state.current_class,
        step=state.step,
        steps=state.steps,
        message=message,
    )


def _ms(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else max(0, int((end - start) * 1000))


def job(key: bytes, record: JobRecord, ext: External, position: int | None) -> dict[str, Any]:
    error = record.error
    return schemas.Job(
        id=record.id,
        status=record.status,
        created_at=schemas.utc(record.created),
        started_at=schemas.utc(record.started) if record.started else None,
        completed_at=schemas.utc(record.completed) if record.completed else None,
        expires_at=schemas.utc(record.expires),
        queue_position=position,
        progress=progress(record),
        outputs=[output(key, record, item, ext) for item in record.outputs],
        error=schemas.JobError(
            code=error.code,
            message=error.message,
            node_id=error.node_id,
            class_type=error.class_type,
            traceback=error.traceback,
        )
        if error
        else None,
        urls=schemas.JobUrls.model_validate(ext.job_urls(record.id)),
        metrics={
            "queue_ms": _ms(record.created, record.started or record.completed),
            "execution_ms": _ms(record.started, record.completed),
        },
        metadata=dict(record.metadata),
    ).dump()


def list_item(record: JobRecord) -> dict[str, Any]:
    return schemas.JobListItem(
        id=record.id,
        status=record.status,
        create_time=schemas.utc(record.created),
        update_time=schemas.utc(max(record.updated, record.created)),
        metadata=dict(record.metadata),
    ).dump()


def lost_job(job_id: str, created_ms: int, retention_s: float, ext: External) -> dict[str, Any]:
    """A job that existed (its id says so) but whose owner restarted or left: `expired`, never 404."""
    created = created_ms / 1000
    return schemas.Job(
        id=job_id,
        status="expired",
        created_at=schemas.utc(created),
        started_at=None,
        completed_at=None,
        expires_at=schemas.utc(created + retention_s),
        queue_position=None,
        progress=None,
        outputs=[],
        error=LOST,
        urls=schemas.JobUrls.model_validate(ext.job_urls(job_id)),
    ).dump()


def status_event(record: JobRecord, position: int | None) -> dict[str, Any]:
    return schemas.StatusEvent(status=record.status, queue_position=position).dump()
