"""`comfyui-standin` / `python -m comfyui_standin`: run the stand-in ComfyUI with ComfyUI's command line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from comfyui_standin.config import parse_args
from comfyui_standin.folders import ExtraPathsError
from comfyui_standin.server import create_app


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.ignored_args:
        logging.getLogger("comfyui_standin").warning(
            "ignoring unknown arguments: %s", " ".join(config.ignored_args)
        )
    try:
        app = create_app(config)
    except (ExtraPathsError, OSError) as ex:
        print(f"comfyui-standin: {ex}", file=sys.stderr)
        return 2
    try:
        web.run_app(
            app,
            host=config.listen.split(",") if "," in config.listen else config.listen,
            port=config.port,
            print=None,
            access_log=None,
            handle_signals=True,
            shutdown_timeout=2.0,
        )
    except OSError as ex:
        print(
            f"comfyui-standin: cannot listen on {config.listen}:{config.port}: {ex.strerror}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
