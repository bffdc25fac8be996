"""What a library sync reports back: one line of JSON in the container's termination message. Pure.

The sync Job's pod has no Kubernetes API access, so it can not write a status or a ConfigMap. It rewrites this
line after every model (in place: the file is a bind mount the kubelet reads after the container ended), so
however the container ends (done, failed, killed at the deadline) the kubelet hands the last state to the
operator in `status.containerStatuses[].state.terminated.message`. The kubelet keeps at most 4096 bytes of it:
`encode` shrinks the line to fit (sha256s the spec already pins first, then long messages, then the other
sha256s) and the operator fills in what it knows.

Line: `{"v":1,"m":<manifest digest[:16]>,"r":[[code,size,sha256,message,flags],...],"p":pruned,"e":error}`
with one entry per manifest model, in order: code R (Ready), F (Failed) or P (not reached); size is the file's
size (Ready) or the bytes written before the failure (Failed); flags: 1 retryable, 2 downloaded in this run.
Trailing default values of an entry are left out. Shrinking ends with the downloaded flags and the sizes of
Ready models, so 200 entries (the CRD's limit) always fit.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any, Literal

VERSION = 1
MAX_MESSAGE_BYTES = 4096
DEFAULTS: tuple[Any, ...] = ("P", 0, "", "", 0)
RETRYABLE = 1
DOWNLOADED = 2
Phase = Literal["Ready", "Failed", "Pending"]
_CODES: dict[str, Phase] = {"R": "Ready", "F": "Failed", "P": "Pending"}
_LETTERS = {phase: code for code, phase in _CODES.items()}


@dataclass(frozen=True)
class ModelReport:
    phase: Phase = "Pending"
    size: int = 0
    sha256: str = ""
    message: str = ""
    retryable: bool = False
    downloaded: bool = False


@dataclass(frozen=True)
class SyncReport:
    manifest: str
    models: list[ModelReport] = field(default_factory=list)
    pruned: int = 0
    error: str = ""

    @property
    def failed(self) -> list[ModelReport]:
        return [m for m in self.models if m.phase == "Failed"]


def _entry(model: ModelReport) -> list[Any]:
    """[code, size, sha256, message, flags] without the trailing defaults (0, "", "", 0)."""
    flags = (RETRYABLE if model.retryable else 0) | (DOWNLOADED if model.downloaded else 0)
    entry: list[Any] = [_LETTERS[model.phase], model.size, model.sha256, model.message, flags]
    while len(entry) > 1 and entry[-1] in (0, ""):
        entry.pop()
    return entry


def _line(report: SyncReport) -> str:
    body = {
        "v": VERSION,
        "m": report.manifest[:16],
        "r": [_entry(model) for model in report.models],
        "p": report.pruned,
        "e": report.error,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def encode(report: SyncReport, pinned: Collection[int] = ()) -> str:
    """The line (UTF-8, at most MAX_MESSAGE_BYTES with its newline). `pinned`: indexes of models whose sha256
    the manifest gives (dropped first when the line is too long: the operator knows them)."""
    steps = [
        lambda i, m: replace(m, sha256="") if i in pinned and m.phase == "Ready" else m,
        lambda i, m: replace(m, message=_cut(m.message, 160)),
        lambda i, m: replace(m, message=_cut(m.message, 40)),
        lambda i, m: replace(m, sha256=""),
        lambda i, m: replace(m, message=""),
        lambda i, m: replace(m, downloaded=False),
        lambda i, m: replace(m, size=0) if m.phase == "Ready" else m,
    ]
    current = replace(report, error=_cut(report.error, 1024))
    for step in [None, *steps]:
        if step is not None:
            current = replace(current, models=[step(i, m) for i, m in enumerate(current.models)])
        line = _line(current)
        if len(line.encode()) < MAX_MESSAGE_BYTES:
            return line + "\n"
    # Only a manifest far beyond the CRD's bounds (200 models) gets here: keep the first entries that fit.
    models = list(current.models)
    while models and len(_line(replace(current, models=models)).encode()) >= MAX_MESSAGE_BYTES:
        models.pop()
    return _line(replace(current, models=models)) + "\n"


def decode(text: str | None) -> SyncReport | None:
    """The report in a termination message, or None when the message is not one (a crash: the kubelet then
    puts the end of the log there)."""
    if not text:
        return None
    first = text.strip().split("\n", 1)[0]
    try:
        body = json.loads(first)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("v") != VERSION or not isinstance(body.get("r"), list):
        return None
    models: list[ModelReport] = []
    for entry in body["r"]:
        if not (isinstance(entry, list) and 1 <= len(entry) <= 5 and entry[0] in _CODES):
            return None
        code, size, sha, message, flags = [*entry, *DEFAULTS[len(entry) :]]
        models.append(
            ModelReport(
                phase=_CODES[code],
                size=int(size),
                sha256=str(sha),
                message=str(message),
                retryable=bool(int(flags) & RETRYABLE),
                downloaded=bool(int(flags) & DOWNLOADED),
            )
        )
    return SyncReport(
        manifest=str(body.get("m", "")),
        models=models,
        pruned=int(body.get("p", 0)),
        error=str(body.get("e", "")),
    )
