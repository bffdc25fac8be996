"""The operator under test as a local process, authenticated as the chart's ServiceAccount (a bound token)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from k8s_kubectl import Kubectl

_FORBIDDEN = re.compile(r"\b403\b|forbidden", re.IGNORECASE)


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def token_kubeconfig(server: str, ca_file: Path, token: str, user: str) -> dict[str, Any]:
    """A kubeconfig that authenticates with a bearer token only (no client certificate)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "k8s-tier", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "k8s-tier", "user": user}}],
        "current-context": "operator",
    }


def write_private(path: Path, text: str) -> None:
    """Writes a secret-bearing file readable by the owner only: temp file, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def token_credential_id(token: str) -> str:
    """`JTI=<jwt id>` of a bound ServiceAccount token: how the audit log names the credential of a request."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"JTI={claims['jti']}" if "jti" in claims else ""


def write_service_account_kubeconfig(
    admin: Kubectl,
    server: str,
    ca_file: Path,
    namespace: str,
    service_account: str,
    path: Path,
    duration: str = "6h",
) -> str:
    """Requests a bound token for the ServiceAccount (TokenRequest API), writes a kubeconfig using it, and
    returns the token's credential id (never the token)."""
    token = admin.out("create", "token", service_account, "-n", namespace, f"--duration={duration}").strip()
    config = token_kubeconfig(server, ca_file, token, service_account_user(namespace, service_account))
    write_private(path, yaml.safe_dump(config))
    return token_credential_id(token)


PORT_SETTINGS = (
    "COMFYUI_OPERATOR_METRICS_PORT",
    "COMFYUI_OPERATOR_LIVENESS_PORT",
    "COMFYUI_OPERATOR_HEALTH_PORT",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def env_from_deployment(
    deployment: dict[str, Any], *, pod_name: str, next_port: Callable[[], int] = free_port
) -> dict[str, str]:
    """The operator container's environment as the chart sets it, resolved for a local process.

    Downward-API values get the pod's name and namespace; every port gets a free local port, so several
    local operator processes can run side by side."""
    namespace = str(deployment["metadata"]["namespace"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    field_values = {"metadata.name": pod_name, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        field = (entry.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
        if field in field_values:
            env[entry["name"]] = field_values[field]
    for name in [*PORT_SETTINGS, *(n for n in env if n.endswith("_PORT"))]:
        env[name] = str(next_port())
    env.setdefault("POD_NAME", pod_name)
    env.setdefault("POD_NAMESPACE", namespace)
    return env


def healthz_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def operator_command() -> list[str]:
    """The console script when installed, else the module entry point of the same Python."""
    script = shutil.which("comfyui-operator")
    return [script] if script else [sys.executable, "-m", "comfyui_operator"]


def log_records(log_text: str) -> list[dict[str, Any]]:
    """The operator's JSON log lines (the chart's default format) as dicts; other lines are left out."""
    records = []
    for line in log_text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def lines_at(log_text: str, *severities: str) -> list[str]:
    """Messages of the JSON log lines with one of `severities` (kopf's names: debug, info, warn, error)."""
    return [str(r.get("message")) for r in log_records(log_text) if r.get("severity") in severities]


def forbidden_lines(log_text: str) -> list[str]:
    """Log lines that report an authorization failure (HTTP 403 / Forbidden)."""
    return [line for line in log_text.splitlines() if _FORBIDDEN.search(line)]


class OperatorProcess:
    """`comfyui-operator` in a subprocess with its own kubeconfig; output goes to one log file."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        args: list[str] | None = None,
        credential: str = "",
        pid_file: Path | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.pid_file = pid_file
        self.credential = credential
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.args = args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.start_offset = 0

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("COMFYUI_OPERATOR_") and k not in {"KUBECONFIG"}
        }
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        if self.running:
            return
        self.start_offset = self.log_size()
        with self.log_path.open("ab") as log:
            log.write(f"\n===== operator start: {' '.join(operator_command() + self.args)} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                operator_command() + self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
            )
        if self.pid_file is not None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.pid_file.write_text(str(self.process.pid))

    @property
    def pid(self) -> int:
        assert self.process is not None, "operator not started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like an OOM kill or a node loss."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, grace: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode

    def close(self) -> None:
        self.stop()

    def ports(self) -> list[int]:
        return [int(v) for k, v in self.extra_env.items() if k.endswith("_PORT") and v.isdigit()]

    def log_text(self, offset: int = 0) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0
