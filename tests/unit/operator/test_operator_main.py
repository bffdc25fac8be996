"""The `comfyui-operator` entry point fails fast and clearly (exit 2) on bad settings or no credentials."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kopf
import pytest
from comfyui_operator import __main__ as main_module
from operator_testlib import fixed_settings


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("COMFYUI_OPERATOR_") and k != "KUBECONFIG"
    }
    clean.update({"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "missing"), **env})
    return subprocess.run(
        [sys.executable, "-m", "comfyui_operator"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_invalid_settings_exit_2_with_the_field_name(tmp_path: Path) -> None:
    result = _run(tmp_path, COMFYUI_OPERATOR_LOG_FORMAT="xml")
    assert result.returncode == 2
    assert "invalid settings" in result.stderr
    assert "log_format" in result.stderr


def test_no_credentials_exit_2(tmp_path: Path) -> None:
    result = _run(tmp_path, COMFYUI_OPERATOR_METRICS_PORT="0", COMFYUI_OPERATOR_LIVENESS_PORT="0")
    assert result.returncode == 2
    assert "no Kubernetes credentials" in result.stderr


def test_version(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "comfyui_operator", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == "0.1.0"


async def test_a_crashed_lease_task_stops_the_operator(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If the Lease renewal dies of an unexpected error, nothing renews the Lease any more: kopf must stop
    (a non-zero exit, so Kubernetes restarts the pod as a standby) instead of acting without the Lease."""

    class CrashingElector:
        lost = False
        released = False

        kube: Any = None

        def __init__(self, kube: Any, *_: Any) -> None:
            CrashingElector.kube = kube

        async def wait_until_leader(self, stop: asyncio.Event) -> bool:
            return True

        async def keep_leading(self, stop: asyncio.Event) -> None:
            raise RuntimeError("unexpected")

        async def release(self) -> None:
            CrashingElector.released = True

    async def operator(*, stop_flag: asyncio.Event, **_: Any) -> None:
        await asyncio.wait_for(stop_flag.wait(), timeout=10)  # kopf runs until its stop flag is set

    monkeypatch.setattr(main_module, "load_api_client", lambda: None)
    monkeypatch.setattr(main_module, "Kube", lambda *args: args)
    monkeypatch.setattr(main_module, "LeaderElector", CrashingElector)
    monkeypatch.setattr(kopf, "operator", operator)
    settings = fixed_settings(metrics_port=0, liveness_port=0, leader_election=True)
    with caplog.at_level(logging.ERROR, logger="comfyui_operator"):
        assert await asyncio.wait_for(main_module.run(settings), timeout=20) == 1
    assert "leader election failed" in caplog.text
    assert CrashingElector.released  # kopf has stopped: give the Lease to a standby at once
    _, executor = CrashingElector.kube  # the Lease has its own thread: never queued behind reconciliation
    assert isinstance(executor, ThreadPoolExecutor)


def test_a_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Another process (an operator already running locally) holds the metrics port: one clear line, exit 2,
    no traceback."""
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        kubeconfig = tmp_path / "kubeconfig"  # loads fine; nothing listens there (never contacted)
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
        )
        result = _run(
            tmp_path,
            KUBECONFIG=str(kubeconfig),
            COMFYUI_OPERATOR_METRICS_PORT=str(port),
            COMFYUI_OPERATOR_LIVENESS_PORT="0",
            COMFYUI_OPERATOR_LOG_FORMAT="text",
        )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"COMFYUI_OPERATOR_METRICS_PORT={port}" in lines[0]
    assert "in use" in lines[0]


def test_watch_event_chatter_is_dropped_but_handler_results_and_warnings_stay(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """kopf logs "Handler 'pod_changed' succeeded." at info for every watch event (through its local,
    not-posted object logger): gone unless the log level is debug; spec-change results and warnings stay."""
    from kopf._core.actions import loggers

    body: Any = kopf.Body({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}})
    config = kopf.OperatorSettings()
    try:
        main_module.configure_logging(fixed_settings(log_format="text"))
        loggers.LocalObjectLogger(body=body, settings=config).info("Handler 'pod_changed' succeeded.")
        loggers.LocalObjectLogger(body=body, settings=config).warning("watch stream broke")
        loggers.ObjectLogger(body=body, settings=config).info("Handler 'converge' succeeded.")
        text = capsys.readouterr().err
        assert "pod_changed" not in text
        assert "watch stream broke" in text
        assert "Handler 'converge' succeeded." in text
        main_module.configure_logging(fixed_settings(log_format="text", log_level="debug"))
        loggers.LocalObjectLogger(body=body, settings=config).info("Handler 'pod_changed' succeeded.")
        assert "pod_changed" in capsys.readouterr().err
    finally:
        logging.getLogger("kopf.objects").filters.clear()
        root = logging.getLogger()
        root.handlers[:] = [h for h in root.handlers if type(h).__name__ != "_KopfStreamHandler"]
        root.setLevel(logging.WARNING)
