"""Every setting of the sidecar, read from the environment.

Upstream comfyui-api variable names (contract section 5) keep their names and defaults unless a
documented fix says otherwise (docs/sidecar.md). Settings of our own are listed after them.
`comfyui-sidecar --help` prints all.
The cache adds its settings by inheritance (a mixin class listed in the bases of `Settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.fetching import header_name, header_value
from comfyui_sidecar.system_events import parse_events
from comfyui_sidecar.v2.settings import ApiSettings


def _under_home(name: str) -> Any:
    def factory(data: dict[str, Any]) -> Path:
        return Path(data["comfy_home"]) / name

    return factory


class SidecarSettings(BaseSettings):
    """The sidecar core's settings (HTTP server, ComfyUI connection, delivery, lifecycle)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)

    # ---- upstream comfyui-api variables -------------------------------------------------------------------
    port: int = Field(3000, ge=1, le=65535, description="Port the sidecar listens on.")
    host: str = Field(
        "::",
        description="Address the sidecar binds to ('::' = all interfaces, IPv6 and IPv4 on one socket).",
    )
    cmd: str = Field(
        "init.sh",
        description="Supervise mode only: command that starts ComfyUI (split like a shell, not run by one).",
    )
    comfy_home: Path = Field(
        Path("/opt/ComfyUI"), description="ComfyUI directory; default root of the others."
    )
    model_dir: Path = Field(
        default_factory=_under_home("models"), description="Model root (default $COMFY_HOME/models)."
    )
    input_dir: Path = Field(
        default_factory=_under_home("input"),
        description="ComfyUI input directory (default $COMFY_HOME/input).",
    )
    output_dir: Path = Field(
        default_factory=_under_home("output"),
        description="ComfyUI output directory (default $COMFY_HOME/output).",
    )
    direct_address: str = Field(
        "127.0.0.1", description="Host of ComfyUI (used when COMFYUI_URL is not set)."
    )
    comfyui_port_host: int = Field(
        8188, ge=1, le=65535, description="Port of ComfyUI (when COMFYUI_URL is unset)."
    )
    startup_check_interval_s: float = Field(
        1.0, gt=0, description="Seconds between checks that ComfyUI answers."
    )
    startup_check_max_tries: int = Field(
        20, ge=1, description="Checks before giving up on ComfyUI at start (supervise mode: exit 1)."
    )
    always_restart_comfyui: bool = Field(
        True,
        description="Supervise mode: restart ComfyUI when it exits (upstream default: false).",
    )
    warmup_prompt_file: Path | None = Field(
        None, description="API-format prompt run before /ready turns 200."
    )
    warmup_prompt_url: str | None = Field(
        None, description="URL of a warmup prompt (used if no file is set)."
    )
    max_body_size_mb: int = Field(100, gt=0, description="Largest request body accepted, in MiB (else 413).")
    max_queue_depth: int = Field(
        0,
        ge=0,
        description="At this many accepted unfinished prompts and jobs (or ComfyUI queue entries) new "
        "submits get 429 with Retry-After and /ready answers 503 (0 = no limit).",
    )
    prepend_filenames: bool = Field(
        True,
        description="true: output prefix becomes '<id>_<prefix>'; false: the prefix is replaced by '<id>'.",
    )
    prompt_webhook_retries: int = Field(3, ge=1, le=20, description="Total delivery attempts per webhook.")
    webhook_secret: SecretStr | None = Field(
        None,
        description="Base64 key for webhook_v2 signatures (a 'whsec_' prefix is stripped). Never logged.",
    )
    log_level: Literal["trace", "debug", "info", "warn", "warning", "error", "fatal"] = Field(
        "info", description="Log level."
    )
    log_format: Literal["json", "text"] = Field(
        "text",
        description="json: one JSON object per line with the job id of the job being handled (the operator "
        "sets it in pods); text: lines for a terminal.",
    )
    system_webhook_url: str | None = Field(
        None, description="http(s) URL that receives ComfyUI events as signed system webhooks."
    )
    system_webhook_events: str = Field(
        "",
        description="'all' or a comma list of events (e.g. progress,executed) for SYSTEM_WEBHOOK_URL.",
    )
    http_auth_header_name: str | None = Field(None, description="Header added to the warmup URL fetch.")
    http_auth_header_value: SecretStr | None = Field(None, description="Value of HTTP_AUTH_HEADER_NAME.")

    # ---- ours ----------------------------------------------------------------------------------------------
    system_webhook_queue_max: int = Field(
        1000,
        ge=1,
        description="System webhook events waiting for delivery at most; when full the oldest is dropped.",
    )
    sidecar_mode: Literal["attach", "supervise"] = Field(
        "attach",
        description="attach: ComfyUI runs elsewhere (another container) at COMFYUI_URL; "
        "supervise: the sidecar starts ComfyUI with CMD and restarts it when it dies. "
        "Default: supervise when CMD is set (as with comfyui-api), else attach.",
    )
    comfyui_url: str | None = Field(
        None,
        description="Base URL of ComfyUI, e.g. http://127.0.0.1:8188 (default from DIRECT_ADDRESS/port).",
    )
    temp_dir: Path = Field(
        default_factory=_under_home("temp"), description="ComfyUI temp directory (PreviewImage outputs)."
    )
    prompt_timeout_s: float = Field(
        600.0, gt=0, description="Longest a prompt may take from queueing to completion before 504."
    )
    comfyui_lost_timeout_s: float = Field(
        15.0, gt=0, description="Fail in-flight prompts with 502 when ComfyUI stays unreachable this long."
    )
    ws_heartbeat_s: float = Field(10.0, gt=0, description="Websocket ping interval to ComfyUI.")
    ws_reconnect_max_s: float = Field(
        5.0, gt=0, description="Longest wait between websocket reconnect attempts."
    )
    history_poll_interval_s: float = Field(
        5.0, gt=0, description="Fallback: how often a waiting prompt checks ComfyUI's /history."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook delivery attempt.")
    webhook_backoff_s: float = Field(1.0, ge=0, description="Wait after the first failed webhook attempt.")
    webhook_backoff_max_s: float = Field(30.0, ge=0, description="Cap of the doubling wait between attempts.")
    shutdown_grace_period_s: float = Field(
        60.0,
        ge=0,
        description="How long in-flight prompts may finish on GET /drain (the pod's preStop hook) and on "
        "SIGTERM before the sidecar stops waiting.",
    )
    drain_delay_s: float = Field(
        5.0,
        ge=0,
        description="GET /drain: seconds /ready stays 503 while new prompts are still accepted, so the "
        "Service stops routing here before the wait for in-flight prompts starts.",
    )
    comfyui_probe_timeout_s: float = Field(
        3.0, gt=0, le=60, description="GET /health/comfyui: how long ComfyUI may take to answer."
    )
    restart_backoff_max_s: float = Field(
        30.0, gt=0, description="Supervise mode: cap of the restart backoff."
    )
    convert_max_pixels: int = Field(
        16384 * 16384,
        ge=1,
        description="Largest image (width x height) convert_output re-encodes, else 422; decoding takes "
        "about 4 bytes per pixel of sidecar memory (16384x16384: ~1.1 GB).",
    )
    max_prompt_nodes: int = Field(
        10_000, ge=1, description="Most nodes a prompt may have (else 400): bounds one prompt's memory."
    )
    max_json_values: int = Field(
        250_000,
        ge=1000,
        description="Most JSON values (counted as commas and colons) a request body may hold (else 413); "
        "keeps parsing memory within a small multiple of the body size.",
    )
    http_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="An idle keep-alive connection, or one whose request headers do not arrive, is closed "
        "after this many seconds.",
    )
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="Longest silence while a request body arrives (then 408)."
    )
    body_total_timeout_s: float = Field(
        300.0, gt=0, description="Longest time a request body may take to arrive in all (then 408)."
    )
    extra_model_loaders: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='Extra model-loader nodes as JSON: {"ClassType": {"input_name": "model_folder"}}.',
    )
    comfyui_urls: str = Field(
        "",
        description="Several local ComfyUIs (one per GPU), comma-separated base URLs; each prompt goes to "
        "one of them (attach mode only). Empty: the one COMFYUI_URL.",
    )
    comfyui_temp_dirs: str = Field(
        "",
        description="With COMFYUI_URLS: each ComfyUI's temp directory, comma-separated in the same order "
        "(ComfyUI empties its own at start, so they are not shared). Empty: TEMP_DIR for all.",
    )
    dispatch_queue_slack: int = Field(
        2,
        ge=0,
        description="With several ComfyUIs: a ComfyUI that holds a prompt's models gets it while its queue "
        "is at most this much longer than the shortest; beyond, the shortest queue wins.",
    )
    loaded_models_max: int = Field(
        16, ge=1, description="Most model names kept per ComfyUI as loaded (an inference, docs/sidecar.md)."
    )
    pod_name: str | None = Field(None, description="The pod's name (downward API), for /internal/placement.")

    @field_validator("system_webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("SYSTEM_WEBHOOK_URL must be an http:// or https:// URL")
        return value

    @field_validator("http_auth_header_name")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        return header_name(value) if value else value

    @field_validator("http_auth_header_value")
    @classmethod
    def _header_value(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            header_value(value.get_secret_value())
        return value

    @field_validator("system_webhook_events")
    @classmethod
    def _known_events(cls, value: str) -> str:
        parse_events(value)
        return value

    @field_validator("warmup_prompt_file")
    @classmethod
    def _warmup_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"WARMUP_PROMPT_FILE does not exist: {value}")
        return value

    @model_validator(mode="after")
    def _cmd_means_supervise(self) -> SidecarSettings:
        """comfyui-api starts ComfyUI from CMD: with CMD set and SIDECAR_MODE unset, supervise."""
        if "cmd" in self.model_fields_set and "sidecar_mode" not in self.model_fields_set:
            self.sidecar_mode = "supervise"
        return self

    @model_validator(mode="after")
    def _local_comfyuis(self) -> SidecarSettings:
        urls, temps = _split(self.comfyui_urls), _split(self.comfyui_temp_dirs)
        if temps and len(temps) != len(urls):
            raise ValueError(f"COMFYUI_TEMP_DIRS has {len(temps)} entries, COMFYUI_URLS {len(urls)}")
        if len(urls) > 1 and self.sidecar_mode == "supervise":
            raise ValueError("COMFYUI_URLS with several ComfyUIs needs SIDECAR_MODE=attach")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"COMFYUI_URLS entry {url!r} must be an http:// or https:// URL")
        return self

    @property
    def comfy_urls(self) -> list[str]:
        """The local ComfyUIs' base URLs (one unless COMFYUI_URLS lists several)."""
        return [url.rstrip("/") for url in _split(self.comfyui_urls)] or [self.comfy_url]

    @property
    def comfy_temp_dirs(self) -> list[Path]:
        """Each local ComfyUI's temp directory, in the order of `comfy_urls`."""
        return [Path(p) for p in _split(self.comfyui_temp_dirs)] or [self.temp_dir] * len(self.comfy_urls)

    @property
    def comfy_url(self) -> str:
        """Base URL of ComfyUI without a trailing slash."""
        if self.comfyui_url:
            return self.comfyui_url.rstrip("/")
        host = self.direct_address
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.comfyui_port_host}"

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_size_mb * 1024 * 1024

    def webhook_key(self) -> str:
        """The webhook secret's text ('' when unset); only for the signer."""
        return self.webhook_secret.get_secret_value() if self.webhook_secret else ""


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class Settings(SidecarSettings, CacheSettings, ApiSettings):
    """All settings of the sidecar process. Other areas add mixins to the bases of this class."""
