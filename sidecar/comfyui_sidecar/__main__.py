"""`comfyui-sidecar`: run the sidecar. Configuration comes from environment variables (see --help)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from comfyui_sidecar.app import STATE_KEY, STOP_KEY, QuietBadRequests, create_app, drain, make_runner
from comfyui_sidecar.library.sync import main as sync_main
from comfyui_sidecar.listen import listening_socket
from comfyui_sidecar.logs import setup_logging
from comfyui_sidecar.model_paths import write_model_paths
from comfyui_sidecar.settings import Settings

log = logging.getLogger("comfyui_sidecar")


def settings_help() -> str:
    """One entry per setting: ENV_NAME (default) and its description."""
    lines = ["environment variables:"]
    for name, info in Settings.model_fields.items():
        default = _show(info.default) if info.default_factory is None else "(see description)"
        lines.append(f"  {name.upper()}  default: {default}")
        lines.append(f"      {info.description or ''}")
    return "\n".join(lines)


def _show(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfyui-sidecar",
        description="A comfyui-api compatible HTTP server in front of ComfyUI. All settings are environment "
        "variables.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--write-model-paths",
        action="store_true",
        help="write ComfyUI's extra_model_paths.yaml (EXTRA_MODEL_PATHS_FILE) from the settings and exit "
        "(the operator's init container runs this before ComfyUI starts)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    sync = commands.add_parser(
        "sync",
        help="fill a model library volume from its manifest and exit (the ComfyUIModelLibrary sync Job)",
        description="Download every model of a library manifest into <root>/<folder>/<file>, skipping files "
        "already there with the right size and sha256. Sources, egress policy and download settings are the "
        "sidecar's environment variables (comfyui-sidecar --help lists them). Exit 0: all ready; 1: a "
        "failure worth retrying; 2: failures that need a spec change.",
    )
    sync.add_argument("--manifest", type=Path, required=True, help="the manifest JSON (from the operator)")
    sync.add_argument("--root", type=Path, required=True, help="the library volume, mounted read-write")
    sync.add_argument(
        "--report",
        type=Path,
        default=None,
        help="file the result line is written to after every model (the Job uses /dev/termination-log)",
    )
    return parser


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (or a fatal ComfyUI failure), drain prompts, return the exit code."""
    app = create_app(settings)
    runner = make_runner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as error:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, error)
        await runner.cleanup()
        return 1
    site = web.SockSite(runner, sock)
    await site.start()
    log.info(
        "listening on %s:%d (mode %s, ComfyUI %s)",
        settings.host,
        settings.port,
        settings.sidecar_mode,
        ", ".join(settings.comfy_urls),
    )
    stop = app[STOP_KEY]
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    state = app[STATE_KEY]
    log.info("stopping: draining in-flight prompts (grace %.0f s)", settings.shutdown_grace_period_s)
    if not await drain(app, settings.shutdown_grace_period_s):
        log.warning("grace period over with prompts still running")
    await runner.cleanup()
    return state.exit_code or 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sync":
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return sync_main(args.manifest, args.root, args.report)
    try:
        settings = Settings()
    except ValidationError as error:
        for item in error.errors(include_url=False):
            field = ".".join(str(part) for part in item["loc"]).upper()
            print(f"comfyui-sidecar: invalid setting {field}: {item['msg']}", file=sys.stderr)
        return 2
    if args.write_model_paths:
        try:
            path = write_model_paths(settings, settings.model_dir)
        except OSError as error:
            print(f"comfyui-sidecar: cannot write the model paths file: {error}", file=sys.stderr)
            return 1
        print(f"comfyui-sidecar: wrote {path}")
        return 0
    setup_logging(settings.log_level, settings.log_format, "sidecar")
    logging.getLogger("aiohttp.server").addFilter(QuietBadRequests())
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
