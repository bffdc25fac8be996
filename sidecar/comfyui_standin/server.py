"""The aiohttp layer: ComfyUI's routes (also under /api) and its websocket, over executor and graph."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import mimetypes
import os
import sys
import uuid
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from PIL import Image

from comfyui_standin import graph
from comfyui_standin.config import StandinConfig
from comfyui_standin.executor import PREVIEW_EVENT, Executor, QueueItem
from comfyui_standin.folders import ModelFolders, confined, is_safe_relative
from comfyui_standin.nodes import NODES, Environment, SpecView, object_info

log = logging.getLogger("comfyui_standin")
COMFYUI_VERSION = "0.3.64"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
INTERNAL_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"
MAX_RENAME_ATTEMPTS = 10_000
SMALL_FILE = 1024 * 1024
SEND_TIMEOUT_S = 5.0


STANDIN_KEY: web.AppKey[Standin] = web.AppKey("standin")


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


class Standin:
    """State of one stand-in server: config, model folders, executor, websockets and the message pump."""

    def __init__(self, config: StandinConfig) -> None:
        config.make_dirs()
        folders = ModelFolders.standard(config.base_directory, config.models_dir, config.output_dir)
        for path in config.extra_model_paths_configs:
            folders.load_extra_config(path)
        self.config = config
        self.env = Environment(config.input_dir, config.output_dir, config.temp_dir, folders)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.outbox: asyncio.Queue[tuple[str, dict[str, Any], str | None]] = asyncio.Queue()
        self.executor = Executor(
            self.env,
            self.send,
            config.exec_delay,
            config.preview_method != "none",
            model_load_delay=config.model_load_delay,
            cache_lru=config.cache_lru,
        )
        self.preview_metadata: set[str] = set()
        """Sockets whose first frame announced supports_preview_metadata: they get type-4 preview frames."""
        self.number = 0
        self.tasks: list[asyncio.Task[None]] = []

    def send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        self.outbox.put_nowait((event, data, sid))

    async def publish_forever(self) -> None:
        """Deliver queued events in order: to one socket (sid) or to all (None)."""
        while True:
            event, data, sid = await self.outbox.get()
            text = json.dumps({"type": event, "data": data}) if event != PREVIEW_EVENT else ""
            if sid is None:
                targets = list(self.sockets.items())
            else:
                targets = [(sid, self.sockets[sid])] if sid in self.sockets else []
            for target, ws in targets:
                try:
                    if event == PREVIEW_EVENT:
                        frame = preview_frame(data, with_metadata=target in self.preview_metadata)
                        await asyncio.wait_for(ws.send_bytes(frame), SEND_TIMEOUT_S)
                        continue
                    await asyncio.wait_for(ws.send_str(text), SEND_TIMEOUT_S)
                except (ConnectionError, RuntimeError):
                    continue
                except TimeoutError:  # a client that stopped reading must not stall everyone else
                    log.warning("closing a websocket that did not take a message within %s s", SEND_TIMEOUT_S)
                    with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                        await asyncio.wait_for(ws.close(), 1.0)

    # ------------------------------------------------------------ websocket

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        self.sockets[sid] = ws
        try:
            await ws.send_str(
                json.dumps({"type": "status", "data": {**self.executor.status_data(), "sid": sid}})
            )
            running = self.executor.running
            if running is not None and running.extra_data.get("client_id") == sid:
                # like ComfyUI: a client that reconnects during its prompt is told the current node
                node = self.executor.current_node
                if node is not None:
                    await ws.send_str(json.dumps({"type": "executing", "data": {"node": node}}))
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                if first:
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        message = json.loads(msg.data)
                        if message.get("type") == "feature_flags":
                            if (message.get("data") or {}).get("supports_preview_metadata") is True:
                                self.preview_metadata.add(sid)
                            await ws.send_str(json.dumps({"type": "feature_flags", "data": self.features()}))
                first = False
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
                self.preview_metadata.discard(sid)
        return ws

    def features(self) -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": self.config.max_upload_size}

    # ------------------------------------------------------------ prompt and queue

    async def post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=500, text=INTERNAL_ERROR)
        if not isinstance(body, dict):
            return web.json_response(
                {"error": _error("invalid_prompt", "Request body must be a JSON object"), "node_errors": {}},
                status=400,
            )
        number: float | int = self.number
        if "number" in body:
            try:
                number = float(body["number"])
            except (TypeError, ValueError):
                return web.json_response(
                    {"error": _error("invalid_prompt", "number must be a number"), "node_errors": {}},
                    status=400,
                )
        if body.get("front"):
            number = -number
        self.number += 1
        if "prompt" not in body:
            return web.json_response(
                {"error": _error("no_prompt", "No prompt provided", "No prompt provided"), "node_errors": {}},
                status=400,
            )
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        targets = body.get("partial_execution_targets")
        if targets is not None and not (
            isinstance(targets, list) and all(isinstance(t, str) for t in targets)
        ):
            return web.json_response(
                {
                    "error": _error("invalid_prompt", "partial_execution_targets must be a list of node ids"),
                    "node_errors": {},
                },
                status=400,
            )
        try:
            result = graph.validate_prompt(prompt, SpecView(self.env), targets)
        except ValueError as ex:
            return web.json_response(
                {"error": _error("invalid_prompt", str(ex)), "node_errors": {}}, status=400
            )
        if not result.ok:
            return web.json_response({"error": result.error, "node_errors": result.node_errors}, status=400)
        extra = body.get("extra_data")
        extra_data = dict(extra) if isinstance(extra, dict) else {}
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        self.executor.put(QueueItem(number, prompt_id, prompt, extra_data, result.outputs))
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
        )

    async def get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.executor.queue_remaining()}})

    async def get_queue(self, request: web.Request) -> web.Response:
        running = self.executor.running
        return web.json_response(
            {
                "queue_running": [running.as_list()] if running is not None else [],
                "queue_pending": [item.as_list() for item in self.executor.pending()],
            }
        )

    async def post_queue(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if body.get("clear"):
            self.executor.clear()
        if isinstance(body.get("delete"), list):
            self.executor.delete({str(x) for x in body["delete"]})
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        items = list(self.executor.history.items())
        try:
            max_items = int(request.query["max_items"]) if "max_items" in request.query else None
            offset = int(request.query.get("offset", -1))
        except ValueError:
            return web.json_response({"error": "max_items and offset must be integers"}, status=400)
        if max_items is not None:
            if offset < 0:
                offset = max(0, len(items) - max_items)
            items = items[offset : offset + max_items]
        elif offset > 0:
            items = items[offset:]
        return web.json_response(dict(items))

    async def get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.executor.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def post_history(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        if body.get("clear"):
            self.executor.history.clear()
        if isinstance(body.get("delete"), list):
            for prompt_id in body["delete"]:
                self.executor.history.pop(str(prompt_id), None)
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        prompt_id = body.get("prompt_id")
        self.executor.request_interrupt(str(prompt_id) if prompt_id is not None else None)
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        self.executor.free(bool(body.get("free_memory", False)))
        return web.Response(status=200)

    # ------------------------------------------------------------ info

    async def get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response({name: object_info(self.env, name) for name in NODES})

    async def get_object_info_class(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        return web.json_response({name: object_info(self.env, name)} if name in NODES else {})

    async def system_stats(self, request: web.Request) -> web.Response:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
        free = page * os.sysconf("SC_AVPHYS_PAGES")
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": total,
                    "ram_free": free,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "",
                    "installed_templates_version": "",
                    "required_templates_version": "",
                    "python_version": sys.version,
                    "pytorch_version": "none (comfyui-standin)",
                    "embedded_python": False,
                    "argv": list(self.config.argv) or ["main.py"],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": total,
                        "vram_free": free,
                        "torch_vram_total": total,
                        "torch_vram_free": free,
                    }
                ],
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(self.env.folders.keys())

    async def models_in_folder(self, request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in self.env.folders.folders:
            return web.Response(status=404)
        return web.json_response(self.env.folders.list_files(folder))

    async def embeddings(self, request: web.Request) -> web.Response:
        names = self.env.folders.list_files("embeddings")
        return web.json_response([os.path.splitext(n)[0] for n in names])

    async def get_features(self, request: web.Request) -> web.Response:
        return web.json_response(self.features())

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            text="<!doctype html><title>ComfyUI stand-in</title><p>comfyui-standin</p>",
            content_type="text/html",
        )

    # ------------------------------------------------------------ files

    def _dir_for(self, kind: str) -> Path | None:
        return {"input": self.env.input_dir, "output": self.env.output_dir, "temp": self.env.temp_dir}.get(
            kind
        )

    async def view(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if "filename" not in query:
            return web.Response(status=404)
        filename = query["filename"]
        kind = query.get("type", "output")
        for tag in ("output", "input", "temp"):
            if filename.endswith(f" [{tag}]"):
                filename, kind = filename[: -len(tag) - 3], tag
        if not filename or filename.startswith("/") or ".." in filename or "\x00" in filename:
            return web.Response(status=400, text="invalid filename")
        directory = self._dir_for(kind)
        if directory is None:
            return web.Response(status=400, text=f"invalid type {kind!r}")
        folder = confined(directory, query.get("subfolder", ""))
        if folder is None:
            return web.Response(status=403, text="subfolder outside the directory")
        path = folder / filename
        if not path.is_file():
            return web.Response(status=404)
        preview = query.get("preview")
        channel = query.get("channel")
        if preview or channel:
            data, content_type = await asyncio.to_thread(_transform_image, path, preview, channel)
            return web.Response(body=data, content_type=content_type)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = {"Content-Type": content_type, "Content-Disposition": f'filename="{path.name}"'}
        if path.stat().st_size <= SMALL_FILE:  # a thread hop costs more than reading a small file
            return web.Response(body=path.read_bytes(), headers=headers)
        return web.FileResponse(path, headers=headers)

    async def upload_image(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except ValueError:
            return web.Response(status=400, text="expected a multipart/form-data body")
        image = form.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400, text="missing 'image' file field")
        kind = str(form.get("type", "input") or "input")
        directory = self._dir_for(kind)
        if directory is None:
            return web.Response(status=400, text=f"invalid type {kind!r}")
        subfolder = str(form.get("subfolder", "") or "")
        folder = confined(directory, subfolder)
        if folder is None:
            return web.Response(status=400, text="subfolder outside the directory")
        name = image.filename
        if not is_safe_relative(name) or "/" in name or "\\" in name:
            return web.Response(status=400, text="invalid filename")
        overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
        data = image.file.read()
        final = await asyncio.to_thread(_store_upload, folder, name, data, overwrite)
        return web.json_response({"name": final, "subfolder": subfolder, "type": kind})


def preview_frame(data: dict[str, Any], *, with_metadata: bool) -> bytes:
    """A binary preview frame: type 4 (metadata JSON, then the JPEG) for clients that announced
    supports_preview_metadata, else type 1 (format 1 = JPEG, then the JPEG), as ComfyUI sends them."""
    image: bytes = data["image"]
    if with_metadata:
        meta = json.dumps(data["metadata"]).encode()
        return (4).to_bytes(4, "big") + len(meta).to_bytes(4, "big") + meta + image
    return (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + image


async def _json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or {} when empty or not an object (ComfyUI ignores such bodies)."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _store_upload(folder: Path, name: str, data: bytes, overwrite: bool) -> str:
    """Write an upload (temp file then rename). Same bytes keep the name; other bytes get "name (i).ext"."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not overwrite:
        stem, ext = os.path.splitext(name)
        digest = hashlib.sha256(data).digest()
        for attempt in range(1, MAX_RENAME_ATTEMPTS + 1):
            if not target.exists():
                break
            if target.is_file() and hashlib.sha256(target.read_bytes()).digest() == digest:
                return target.name
            target = folder / f"{stem} ({attempt}){ext}"
        else:
            raise web.HTTPConflict(text="too many files with this name")
    tmp = folder / f".{target.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    tmp.replace(target)
    return target.name


def _transform_image(path: Path, preview: str | None, channel: str | None) -> tuple[bytes, str]:
    with Image.open(path) as img:
        img.load()
        out = img.convert("RGBA")
    if channel == "rgb":
        out = out.convert("RGB")
    elif channel == "a":
        out = out.getchannel("A")
    buffer = BytesIO()
    if preview:
        fmt, _, quality = preview.partition(";")
        fmt = fmt.lower() if fmt.lower() in ("webp", "jpeg") else "webp"
        q = int(quality) if quality.isdigit() else 90
        (out.convert("RGB") if fmt == "jpeg" else out).save(buffer, format=fmt.upper(), quality=q)
        return buffer.getvalue(), f"image/{fmt}"
    out.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


@web.middleware
async def origin_guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """403 with an empty body when a loopback Host gets a request from another Origin (like ComfyUI)."""
    origin = request.headers.get("Origin")
    host = request.headers.get("Host", "")
    if origin and host:
        host_name = urlsplit(f"//{host}").hostname or ""
        if host_name in LOOPBACK_HOSTS and urlsplit(origin).netloc != host:
            return web.Response(status=403)
    response: web.StreamResponse = await handler(request)
    return response


def create_app(config: StandinConfig) -> web.Application:
    """The stand-in as an aiohttp application (worker and message pump start with the app)."""
    standin = Standin(config)
    app = web.Application(client_max_size=config.max_upload_size, middlewares=[origin_guard])
    app[STANDIN_KEY] = standin
    routes: list[tuple[str, str, Any]] = [
        ("GET", "/ws", standin.websocket),
        ("GET", "/prompt", standin.get_prompt),
        ("POST", "/prompt", standin.post_prompt),
        ("GET", "/queue", standin.get_queue),
        ("POST", "/queue", standin.post_queue),
        ("GET", "/history", standin.get_history),
        ("GET", "/history/{prompt_id}", standin.get_history_item),
        ("POST", "/history", standin.post_history),
        ("GET", "/object_info", standin.get_object_info),
        ("GET", "/object_info/{node_class}", standin.get_object_info_class),
        ("GET", "/view", standin.view),
        ("POST", "/upload/image", standin.upload_image),
        ("POST", "/interrupt", standin.interrupt),
        ("POST", "/free", standin.free),
        ("GET", "/system_stats", standin.system_stats),
        ("GET", "/models", standin.models),
        ("GET", "/models/{folder}", standin.models_in_folder),
        ("GET", "/embeddings", standin.embeddings),
        ("GET", "/features", standin.get_features),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/api" + path, handler)
    app.router.add_get("/", standin.index)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_close_sockets)
    return app


async def _background(app: web.Application) -> AsyncIterator[None]:
    standin = app[STANDIN_KEY]
    if standin.config.startup_delay > 0:
        await asyncio.sleep(standin.config.startup_delay)
    standin.tasks = [
        asyncio.create_task(standin.executor.run_forever()),
        asyncio.create_task(standin.publish_forever()),
    ]
    yield
    standin.executor.interrupt.set()  # lets a node sleeping in a worker thread finish at once
    for task in standin.tasks:
        task.cancel()
    for task in standin.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _close_sockets(app: web.Application) -> None:
    standin = app[STANDIN_KEY]
    for ws in list(standin.sockets.values()):
        await ws.close()
