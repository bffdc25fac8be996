"""v2 jobs accepted while no replica could take them ("held"), until one runs them.

A held job has an id the router minted (owner: this router), so the client polls it like any job. When a
replica is ready the job is submitted there with the label `comfyui_router_job: <held id>` and an
Idempotency-Key (the client's, else the held id); from then on the router answers the held id with the
replica's job (`real_id`), and any router finds that job again by its label, on the replicas themselves.

Where held jobs live until then: in memory on every router of the instance (each change is sent to the others,
`held_sync`), and in a journal directory (an emptyDir: it survives a restart of the router's container). Only
`extra_data` (a partner API key) is kept out of the journal: it lives in memory, on the routers, until the job
is dispatched. A held job that no replica took within HOLD_TIMEOUT_S fails (`no_replica_ready`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from comfyui_sidecar.v2 import schemas
from comfyui_sidecar.v2.links import External
from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)
LABEL = "comfyui_router_job"
"""The label a dispatched held job carries on its replica: the held id."""
MAX_RECORDS = 10_000
HeldStatus = Literal["held", "dispatched", "canceled", "failed"]
_RANK = {"held": 0, "canceled": 1, "failed": 1, "dispatched": 2}
"""Merging two copies: a later state wins; `dispatched` beats a cancel made meanwhile (the cancel is then
sent to the replica)."""


class HeldJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    created: float
    updated: float
    workflow: dict[str, Any] | None = None
    extra_data: dict[str, Any] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    models: list[str] = Field(default_factory=list)
    status: HeldStatus = "held"
    real_id: str | None = None
    error: dict[str, str] | None = None
    size: int = 0
    cancel_requested: bool = False

    def newer_than(self, other: HeldJob) -> bool:
        if _RANK[self.status] != _RANK[other.status]:
            return _RANK[self.status] > _RANK[other.status]
        return self.updated > other.updated


class HeldFull(Exception):
    """The bound on held jobs is reached (429 with Retry-After)."""


class Journal:
    """One JSON file per held job in `directory` (written to a temporary file, then renamed)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.json"

    def write(self, job: HeldJob) -> None:
        data = job.model_dump(mode="json", exclude={"extra_data"})
        handle, temp = tempfile.mkstemp(dir=self.directory, prefix=".held-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(data, out, separators=(",", ":"))
            os.replace(temp, self._path(job.id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def remove(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(job_id).unlink()

    def load(self) -> list[HeldJob]:
        jobs = []
        for path in sorted(self.directory.glob("job_*.json")):
            try:
                jobs.append(HeldJob.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError) as error:
                log.warning("skipping the unreadable held job %s: %s", path.name, error)
        return jobs


class HeldStore:
    def __init__(
        self,
        *,
        max_jobs: int,
        max_bytes: int,
        hold_timeout_s: float,
        retention_s: float,
        journal: Journal | None = None,
    ) -> None:
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.hold_timeout_s = hold_timeout_s
        self.retention_s = retention_s
        self.journal = journal
        self.jobs: dict[str, HeldJob] = {}

    # ---- reading ------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> HeldJob | None:
        return self.jobs.get(job_id)

    def held(self) -> list[HeldJob]:
        """Jobs still waiting for a replica, oldest first."""
        return sorted((job for job in self.jobs.values() if job.status == "held"), key=lambda j: j.created)

    @property
    def held_bytes(self) -> int:
        return sum(job.size for job in self.jobs.values() if job.status == "held")

    def position(self, job: HeldJob) -> int | None:
        if job.status != "held":
            return None
        return 1 + sum(1 for other in self.held() if other.created < job.created)

    def with_key(self, key: str) -> HeldJob | None:
        return next((job for job in self.jobs.values() if job.idempotency_key == key), None)

    # ---- changing -----------------------------------------------------------------------------------------
    def admit(self, size: int, waiting: int) -> None:
        """Raise HeldFull unless one more job of `size` bytes fits beside `waiting` waiting requests."""
        count = len(self.held()) + waiting
        if count >= self.max_jobs:
            raise HeldFull(f"{count} jobs are already waiting for a replica (MAX_HELD_JOBS {self.max_jobs})")
        if self.held_bytes + size > self.max_bytes:
            raise HeldFull(f"the held jobs would exceed MAX_HELD_BYTES ({self.max_bytes} bytes)")

    def put(self, job: HeldJob) -> bool:
        """Store `job` unless the copy held is newer; True when it changed."""
        current = self.jobs.get(job.id)
        if current is not None and not job.newer_than(current):
            return False
        if job.status != "held":
            job = job.model_copy(update={"workflow": None, "extra_data": None})
        self.jobs[job.id] = job
        if self.journal is not None:
            try:
                self.journal.write(job)
            except OSError as error:
                log.warning("could not journal held job %s: %s", job.id, error)
        self._bound()
        return True

    def drop(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)
        if self.journal is not None:
            self.journal.remove(job_id)

    def expire(self, now: float) -> list[HeldJob]:
        """Fail held jobs older than the hold timeout (returned), forget records past their retention."""
        failed = []
        for job in list(self.jobs.values()):
            if now >= job.created + self.retention_s:
                self.drop(job.id)
            elif job.status == "held" and now >= job.created + self.hold_timeout_s:
                error = {
                    "code": "no_replica_ready",
                    "message": f"no replica became ready within {self.hold_timeout_s:g} s (HOLD_TIMEOUT_S)",
                }
                update = {"status": "failed", "error": error, "updated": now}
                changed = job.model_copy(update=update)
                self.put(changed)
                failed.append(changed)
        return failed

    def _bound(self) -> None:
        while len(self.jobs) > MAX_RECORDS:
            done = [job for job in self.jobs.values() if job.status != "held"]
            if not done:
                return
            self.drop(min(done, key=lambda job: job.created).id)

    def load_journal(self) -> int:
        if self.journal is None:
            return 0
        loaded = self.journal.load()
        for job in loaded:
            current = self.jobs.get(job.id)
            if current is None or job.newer_than(current):
                self.jobs[job.id] = job
        return len(loaded)


# ---- rendering (pure) ----------------------------------------------------------------------------------
_SHOWN_STATUS: dict[str, schemas.JobStatus] = {"held": "queued", "canceled": "canceled", "failed": "failed"}


def render(job: HeldJob, position: int | None, ext: External, retention_s: float) -> dict[str, Any]:
    """The v2 Job of a job the router answers itself (held, or ended before any replica took it)."""
    terminal = job.status in ("canceled", "failed")
    error = job.error
    return schemas.Job(
        id=job.id,
        status=_SHOWN_STATUS[job.status],
        created_at=schemas.utc(job.created),
        started_at=None,
        completed_at=schemas.utc(job.updated) if terminal else None,
        expires_at=schemas.utc(job.created + retention_s),
        queue_position=position,
        progress=None,
        outputs=[],
        error=schemas.JobError(code=error["code"], message=error["message"]) if error else None,
        urls=schemas.JobUrls.model_validate(ext.job_urls(job.id)),
        metrics={"queue_ms": None, "execution_ms": None},
        metadata=dict(job.labels),
    ).dump()


def status_event(job: HeldJob, position: int | None) -> dict[str, Any]:
    shown = _SHOWN_STATUS.get(job.status, "queued")
    return schemas.StatusEvent(status=shown, queue_position=position).dump()


def rewriter(real_id: str, held_id: str) -> Any:
    """Bytes of the replica's answers about `real_id`, as answers about `held_id` (ids, links, the outputs'
    job ids; the router's label left out of `metadata`)."""
    old, new = real_id.encode(), held_id.encode()

    def rewrite(raw: bytes) -> bytes:
        raw = raw.replace(old, new)
        if not raw.lstrip().startswith(b"{"):
            return raw
        try:
            body = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
            body["metadata"].pop(LABEL, None)
            return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return raw

    return rewrite
