"""Configuration of the stand-in ComfyUI and its command line (flags like ComfyUI's main.py)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")


@dataclass(frozen=True)
class StandinConfig:
    """Everything the stand-in needs. Directories default to ComfyUI's layout under `base_directory`."""

    base_directory: Path
    listen: str = "127.0.0.1"
    port: int = 8188
    input_directory: Path | None = None
    output_directory: Path | None = None
    temp_directory: Path | None = None
    user_directory: Path | None = None
    extra_model_paths_configs: tuple[Path, ...] = ()
    exec_delay: float = 0.0
    model_load_delay: float = 0.0
    """Seconds a model-loader node takes when it really runs (not served from the execution cache)."""
    cache_lru: int = 0
    """ComfyUI's --cache-lru N: keep up to N node outputs across prompts; 0 = the classic cache (only the
    nodes of the latest prompt are kept)."""
    startup_delay: float = 0.0
    preview_method: str = "none"
    """none: no previews (ComfyUI's default); otherwise samplers send a JPEG preview per step."""
    max_upload_size: int = 100 * 1024 * 1024
    argv: tuple[str, ...] = field(default_factory=tuple)
    ignored_args: tuple[str, ...] = ()  # ComfyUI flags the stand-in does not know; warned about and ignored

    @property
    def models_dir(self) -> Path:
        return self.base_directory / "models"

    @property
    def input_dir(self) -> Path:
        return self.input_directory or self.base_directory / "input"

    @property
    def output_dir(self) -> Path:
        return self.output_directory or self.base_directory / "output"

    @property
    def temp_dir(self) -> Path:
        # ComfyUI appends "temp" to --temp-directory.
        if self.temp_directory is not None:
            return self.temp_directory / "temp"
        return self.base_directory / "temp"

    def make_dirs(self) -> None:
        """Create input, output and temp (errors propagate) and `models` if possible (may be read-only)."""
        for directory in (self.input_dir, self.output_dir, self.temp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.models_dir.mkdir(parents=True, exist_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfyui-standin",
        description="A stand-in for ComfyUI that speaks its HTTP and websocket protocol (no GPU needed).",
    )
    parser.add_argument(
        "--listen",
        nargs="?",
        const="0.0.0.0",  # noqa: S104 - a bare --listen means all interfaces, as in ComfyUI
        default="127.0.0.1",
        help="address to listen on (a bare --listen means all interfaces)",
    )
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument(
        "--base-directory", type=Path, default=None, help="models, input, output and temp live here"
    )
    parser.add_argument("--input-directory", type=Path, default=None)
    parser.add_argument("--output-directory", type=Path, default=None)
    parser.add_argument("--temp-directory", type=Path, default=None, help="temp files go to <this>/temp")
    parser.add_argument("--user-directory", type=Path, default=None)
    parser.add_argument(
        "--extra-model-paths-config",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="ComfyUI extra_model_paths.yaml (repeatable)",
    )
    parser.add_argument("--max-upload-size", type=float, default=100, help="in MB")
    parser.add_argument("--exec-delay", type=float, default=0.0, help="stand-in only: seconds spent per node")
    parser.add_argument(
        "--model-load-delay",
        type=float,
        default=0.0,
        help="stand-in only: seconds a model-loader node takes when it runs (not when served from the cache)",
    )
    parser.add_argument(
        "--cache-lru",
        type=int,
        default=0,
        help="keep up to N node outputs across prompts (LRU); 0 = ComfyUI's classic cache",
    )
    parser.add_argument(
        "--startup-delay", type=float, default=0.0, help="stand-in only: seconds before listening"
    )
    parser.add_argument(
        "--preview-method",
        choices=PREVIEW_METHODS,
        default="none",
        help="none (default), or a method: KSampler and StandinSleep then send a JPEG preview per step",
    )
    # Accepted for compatibility with ComfyUI's command line, and ignored.
    for flag in (
        "--cpu",
        "--lowvram",
        "--normalvram",
        "--highvram",
        "--novram",
        "--gpu-only",
        "--disable-auto-launch",
        "--disable-api-nodes",
        "--disable-metadata",
        "--dont-print-server",
        "--disable-all-custom-nodes",
        "--force-fp16",
        "--force-fp32",
        "--fp16-vae",
        "--bf16-vae",
        "--fp32-vae",
        "--disable-xformers",
        "--use-pytorch-cross-attention",
        "--use-split-cross-attention",
        "--use-quad-cross-attention",
        "--disable-smart-memory",
        "--deterministic",
        "--fast",
        "--multi-user",
        "--enable-cors-header",
        "--log-stdout",
        "--quick-test-for-ci",
        "--windows-standalone-build",
    ):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in (
        "--cuda-device",
        "--database-url",
        "--front-end-version",
        "--verbose",
        "--reserve-vram",
        "--preview-size",
        "--front-end-root",
        "--default-device",
    ):
        parser.add_argument(flag, default=None, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str]) -> StandinConfig:
    """Parse a ComfyUI-like command line into a config. Unknown flags are kept in `ignored_args` (ComfyUI has
    many the stand-in need not know); a bad value of a known flag exits with a message (SystemExit)."""
    parser = build_parser()
    ns, unknown = parser.parse_known_args(list(argv))
    if not 0 <= ns.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, got {ns.port}")
    if ns.exec_delay < 0 or ns.startup_delay < 0 or ns.model_load_delay < 0:
        parser.error("--exec-delay, --model-load-delay and --startup-delay must not be negative")
    if ns.cache_lru < 0:
        parser.error(f"--cache-lru must not be negative, got {ns.cache_lru}")
    base = (ns.base_directory or Path.cwd()).resolve()
    return StandinConfig(
        base_directory=base,
        listen=ns.listen,
        port=ns.port,
        input_directory=ns.input_directory.resolve() if ns.input_directory else None,
        output_directory=ns.output_directory.resolve() if ns.output_directory else None,
        temp_directory=ns.temp_directory.resolve() if ns.temp_directory else None,
        user_directory=ns.user_directory.resolve() if ns.user_directory else None,
        extra_model_paths_configs=tuple(p.resolve() for p in ns.extra_model_paths_config),
        exec_delay=ns.exec_delay,
        model_load_delay=ns.model_load_delay,
        cache_lru=ns.cache_lru,
        startup_delay=ns.startup_delay,
        preview_method=ns.preview_method,
        max_upload_size=int(ns.max_upload_size * 1024 * 1024),
        argv=("main.py", *argv),
        ignored_args=tuple(unknown),
    )
