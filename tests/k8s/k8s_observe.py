"""Reading what the API server saw: its audit log (who did what) and its Prometheus metrics (how much)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
METRIC_WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
# What the simulated kubelets and the control plane's leader election write all the time.
BACKGROUND_RESOURCES = frozenset({"leases", "nodes"})
# The audit log names the bound token (JWT ID) behind a request: it tells two processes of one SA apart.
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"
DECISION = "authorization.k8s.io/decision"  # "allow" or "forbid": tells RBAC denials from admission ones

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class AuditEvent:
    user: str
    verb: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    timestamp: str
    credential: str = ""
    decision: str = ""
    message: str = ""

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    def describe(self) -> str:
        target = "/".join(p for p in (self.namespace, self.resource, self.name) if p)
        sub = f"/{self.subresource}" if self.subresource else ""
        why = f" ({self.message})" if self.code >= 400 and self.message else ""
        return f"{self.verb} {target}{sub} -> {self.code}{why}"


def parse_audit(text: str) -> list[AuditEvent]:
    """The audit log's JSON lines -> events (lines that are not complete events are skipped)."""
    events = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            raw: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            continue
        ref = raw.get("objectRef") or {}
        extra = (raw.get("user") or {}).get("extra") or {}
        events.append(
            AuditEvent(
                user=str(raw.get("user", {}).get("username", "")),
                verb=str(raw.get("verb", "")),
                resource=str(ref.get("resource", "")),
                subresource=str(ref.get("subresource", "")),
                namespace=str(ref.get("namespace", "")),
                name=str(ref.get("name", "")),
                code=int((raw.get("responseStatus") or {}).get("code", 0)),
                timestamp=str(raw.get("stageTimestamp", "")),
                credential=",".join(extra.get(CREDENTIAL_ID, [])),
                decision=str((raw.get("annotations") or {}).get(DECISION, "")),
                message=str((raw.get("responseStatus") or {}).get("message", "")),
            )
        )
    return events


class AuditLog:
    """The audit file, read incrementally: `mark()` then `since_mark()` gives what happened in between."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def _read_from(self, offset: int) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def mark(self) -> int:
        self._offset = self.path.stat().st_size if self.path.exists() else 0
        return self._offset

    def since_mark(self) -> list[AuditEvent]:
        return parse_audit(self._read_from(self._offset))

    def all(self) -> list[AuditEvent]:
        return parse_audit(self._read_from(0))


def writes(events: Iterable[AuditEvent], user: str) -> list[AuditEvent]:
    return [e for e in events if e.user == user and e.is_write]


def forbidden(events: Iterable[AuditEvent], user: str | None = None) -> list[AuditEvent]:
    """Every 403 answer (RBAC denial or an admission refusal such as writing into a terminating namespace)."""
    return [e for e in events if e.code == 403 and (user is None or e.user == user)]


def denied_by_rbac(events: Iterable[AuditEvent], user: str | None = None) -> list[AuditEvent]:
    """Requests the authorizer refused (a missing RBAC rule)."""
    return [e for e in events if e.decision == "forbid" and (user is None or e.user == user)]


def parse_metric(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric from Prometheus text exposition: [(labels, value)]."""
    samples = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match or match.group("name") != name:
            continue
        labels = dict(_LABEL.findall(match.group("labels") or ""))
        samples.append((labels, float(match.group("value"))))
    return samples


def write_requests(metrics_text: str, *, include_background: bool = False) -> Counter[str]:
    """apiserver_request_total write requests by `verb resource[/subresource]`.

    Background writes (node heartbeats from kwok, leader-election leases) are left out unless asked for."""
    totals: Counter[str] = Counter()
    for labels, value in parse_metric(metrics_text, "apiserver_request_total"):
        if labels.get("verb") not in METRIC_WRITE_VERBS:
            continue
        resource = labels.get("resource", "")
        if resource in BACKGROUND_RESOURCES and not include_background:
            continue
        sub = labels.get("subresource")
        key = f"{labels['verb']} {resource}" + (f"/{sub}" if sub else "")
        totals[key] += int(value)
    return totals


def counter_delta(before: Counter[str], after: Counter[str]) -> Counter[str]:
    """after - before, keeping only keys that grew."""
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)})
