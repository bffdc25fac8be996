"""`comfyui-router`: run the router. Configuration comes from environment variables (see --help)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web
from comfyui_sidecar.listen import listening_socket
from comfyui_sidecar.logs import setup_logging
from pydantic import ValidationError

from comfyui_router.app import STATE_KEY, create_app
from comfyui_router.settings import RouterSettings

log = logging.getLogger("comfyui_router")


def settings_help() -> str:
    lines = ["environment variables:"]
    for name, info in RouterSettings.model_fields.items():
        default = "unset" if info.default is None else str(info.default)
        if isinstance(info.default, bool):
            default = str(info.default).lower()
        lines.append(f"  {name.upper()}  default: {default}")
        lines.append(f"      {info.description or ''}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="comfyui-router",
        description="Routes comfyui-api and Comfy API v2 requests to the replica of a ComfyUI instance that "
        "holds the job's models, and holds jobs while no replica is ready. All settings are environment "
        "variables.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


async def serve(settings: RouterSettings) -> int:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace_period_s)
    await runner.setup()
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as error:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, error)
        await runner.cleanup()
        return 1
    await web.SockSite(runner, sock).start()
    log.info("listening on %s:%d", settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    app[STATE_KEY]["draining"] = True
    log.info("stopping: /ready is 503; requests are taken for %.0f s more", settings.drain_delay_s)
    await asyncio.sleep(settings.drain_delay_s)
    await runner.cleanup()  # waits up to SHUTDOWN_GRACE_PERIOD_S for requests in flight
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    try:
        settings = RouterSettings()
    except ValidationError as error:
        for item in error.errors(include_url=False):
            field = ".".join(str(part) for part in item["loc"]).upper()
            print(f"comfyui-router: invalid setting {field}: {item['msg']}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format, "router")
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
