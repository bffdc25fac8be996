"""Settings: upstream names and defaults, our additions, --help."""

from __future__ import annotations

from pathlib import Path

import pytest
from comfyui_sidecar.__main__ import build_parser, main
from comfyui_sidecar.settings import Settings
from pydantic import ValidationError


def test_upstream_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.port == 3000
    assert settings.host == "::"
    assert settings.comfy_home == Path("/opt/ComfyUI")
    assert settings.input_dir == Path("/opt/ComfyUI/input")
    assert settings.output_dir == Path("/opt/ComfyUI/output")
    assert settings.max_body_size_mb == 100
    assert settings.max_queue_depth == 0
    assert settings.prompt_webhook_retries == 3
    assert settings.prepend_filenames is True
    assert settings.comfy_url == "http://127.0.0.1:8188"
    assert settings.sidecar_mode == "attach"


def test_environment_variables_keep_upstream_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMFY_HOME", str(tmp_path))
    monkeypatch.setenv("PREPEND_FILENAMES", "false")
    monkeypatch.setenv("MAX_QUEUE_DEPTH", "4")
    monkeypatch.setenv("DIRECT_ADDRESS", "::1")
    monkeypatch.setenv("COMFYUI_PORT_HOST", "9000")
    monkeypatch.setenv("WEBHOOK_SECRET", "c2VjcmV0")
    monkeypatch.setenv("EXTRA_MODEL_LOADERS", '{"MyLoader": {"w": "my_models"}}')
    settings = Settings()
    assert settings.input_dir == tmp_path / "input"
    assert settings.prepend_filenames is False
    assert settings.max_queue_depth == 4
    assert settings.comfy_url == "http://[::1]:9000"
    assert settings.webhook_key() == "c2VjcmV0"
    assert "c2VjcmV0" not in repr(settings)
    assert settings.extra_model_loaders == {"MyLoader": {"w": "my_models"}}


def test_comfyui_url_wins_over_address_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYUI_URL", "http://comfy:8188/")
    assert Settings().comfy_url == "http://comfy:8188"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "0"),
        ("MAX_BODY_SIZE_MB", "0"),
        ("SIDECAR_MODE", "both"),
        ("WARMUP_PROMPT_FILE", "/no/such.json"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_help_lists_every_setting_with_its_env_name() -> None:
    text = build_parser().format_help()
    for name in Settings.model_fields:
        assert name.upper() in text
    assert "MAX_QUEUE_DEPTH  default: 0" in text


def test_main_reports_a_bad_setting_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "not-a-number")
    assert main([]) == 2
    assert "invalid setting PORT" in capsys.readouterr().err


def test_system_webhook_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from comfyui_sidecar.system_events import COMFY_EVENTS, STORAGE_EVENTS, parse_events

    assert parse_events("all") == COMFY_EVENTS | STORAGE_EVENTS
    assert parse_events("progress, comfy.executed,storage.file_downloaded") == {
        "progress",
        "executed",
        "file_downloaded",
    }
    monkeypatch.setenv("SYSTEM_WEBHOOK_EVENTS", "progress,nonsense")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("SYSTEM_WEBHOOK_EVENTS", "progress")
    monkeypatch.setenv("SYSTEM_WEBHOOK_URL", "ftp://x")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"), [("HTTP_AUTH_HEADER_NAME", "X-A\r\nB: c"), ("HTTP_AUTH_HEADER_VALUE", "v\nw")]
)
def test_cr_lf_in_the_auth_header_settings_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("HTTP_AUTH_HEADER_NAME", "X-Auth")
    monkeypatch.setenv("HTTP_AUTH_HEADER_VALUE", "secret")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "CR" in str(caught.value)
    assert "secret" not in str(caught.value)
