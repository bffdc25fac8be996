"""Log lines of the sidecar (and of the router, which imports this module): JSON objects, one per line, or
text for a terminal, each carrying the id of the job being handled.

The job id lives in a context variable: the job flow sets it (`job_scope`) where it takes a job (POST
/prompt, a v2 submit, the warmup), and every line logged in that task, and in the tasks it starts (webhook
deliveries, the v2 job's watcher: asyncio copies the context into a new task), carries it. No I/O here
besides the handler's stream; stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["json", "text"]
JOB_ID: ContextVar[str | None] = ContextVar("job_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


def bind_job(job_id: str) -> None:
    """Lines logged from here on in this task (and tasks it starts) carry `job_id`."""
    JOB_ID.set(job_id)


@contextlib.contextmanager
def job_scope(job_id: str) -> Iterator[None]:
    """`job_id` on every line logged inside the block (and in tasks started inside it)."""
    token = JOB_ID.set(job_id)
    try:
        yield
    finally:
        JOB_ID.reset(token)


class JobIdFilter(logging.Filter):
    """Puts the current job id on each record (`record.job_id`, None outside a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = JOB_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "component", "job_id"?, "exception"?}` on one line."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "component": self.component,
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            line["job_id"] = job_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger>: <message> [job <id>]`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            return text
        head, newline, rest = text.partition("\n")  # after the message, before a traceback
        return f"{head} [job {job_id}]{newline}{rest}"


def make_handler(log_format: LogFormat, component: str, stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter(component) if log_format == "json" else TextFormatter())
    return handler


def setup_logging(level: str, log_format: LogFormat, component: str, stream: TextIO | None = None) -> None:
    """The root logger writes `log_format` lines at `level` (a LEVELS name) to stderr (or `stream`),
    replacing handlers set before."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(log_format, component, stream))
    root.setLevel(LEVELS[level])
