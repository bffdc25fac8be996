"""The `comfyui-operator` entry point fails fast and clearly (exit 2) on bad settings or no credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
