"""Log lines: JSON (one object per line) or text, with the job id of the job being handled."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from comfyui_sidecar.logs import bind_job, job_scope, setup_logging

log = logging.getLogger("comfyui_sidecar.test")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_json_lines_carry_the_job_id_in_scope_and_in_tasks_started_there(stream: io.StringIO) -> None:
    setup_logging("info", "json", "sidecar", stream)
    log.info("before")

    async def delivery() -> None:
        await asyncio.sleep(0)
        log.warning("webhook attempt %d failed", 1)

    with job_scope("job-1"):
        log.info("queued")
        task = asyncio.get_running_loop().create_task(delivery())
    log.info("after")
    await task
    first, queued, after, webhook = lines(stream)
    assert "job_id" not in first
    assert queued["job_id"] == "job-1"
    assert (queued["level"], queued["logger"], queued["component"]) == ("info", log.name, "sidecar")
    assert str(queued["time"]).endswith("+00:00")
    assert "job_id" not in after
    assert (webhook["job_id"], webhook["level"]) == ("job-1", "warning")
    assert webhook["message"] == "webhook attempt 1 failed"


async def test_bind_job_holds_for_the_rest_of_the_task_only(stream: io.StringIO) -> None:
    setup_logging("debug", "json", "router", stream)

    async def handler(job_id: str) -> None:
        bind_job(job_id)
        log.debug("handling")

    await asyncio.gather(asyncio.create_task(handler("a")), asyncio.create_task(handler("b")))
    log.info("outside")
    a, b, outside = lines(stream)
    assert (a["job_id"], b["job_id"], a["component"]) == ("a", "b", "router")
    assert "job_id" not in outside


def test_exceptions_and_levels(stream: io.StringIO) -> None:
    setup_logging("warning", "json", "sidecar", stream)
    log.info("hidden")
    with job_scope("j"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    (line,) = lines(stream)
    assert line["level"] == "error"
    assert "ValueError: boom" in str(line["exception"])
    assert line["job_id"] == "j"


def test_text_format_for_a_terminal(stream: io.StringIO) -> None:
    setup_logging("info", "text", "sidecar", stream)
    with job_scope("job-7"):
        log.info("queued on %s", "comfyui 1")
    log.info("idle")
    queued, idle = stream.getvalue().splitlines()
    assert queued.endswith("INFO comfyui_sidecar.test: queued on comfyui 1 [job job-7]")
    assert idle.endswith("INFO comfyui_sidecar.test: idle")
    with pytest.raises(json.JSONDecodeError):
        json.loads(queued)
