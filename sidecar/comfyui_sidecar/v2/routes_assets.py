"""/api/v2/assets handlers: upload, from-hash, by-hash probe, metadata, content (with Range), delete.

Uploads stay on the pod that received them (their id names it); any pod finds them by id (forwarding) or by
hash (asking every peer). Outputs of jobs are assets too: their ids name the job's pod.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiohttp import BodyPartReader, web
from comfyui_sidecar.job_records import JobRecord, OutputFile
from comfyui_sidecar.openapi import documented
from comfyui_sidecar.v2 import docs, ids, render, schemas
from comfyui_sidecar.v2.assets import AssetError, AssetRecord, check_file_path
from comfyui_sidecar.v2.context import V2, V2_KEY, locate, read_json
from comfyui_sidecar.v2.errors import V2Error, invalid_request, not_found
from comfyui_sidecar.v2.links import HOP_HEADER

_HASH = re.compile(schemas.HASH_PATTERN)
TEXT_FIELD_LIMIT = 4096
CONTENT_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _asset_body(
    v2: V2, request: web.Request, record: AssetRecord, created_new: bool | None = None
) -> dict[str, Any]:
    url = v2.ext(request).content_url(record.id)
    return schemas.Asset(
        id=record.id,
        hash=record.hash,
        size_bytes=record.size,
        content_type=record.content_type,
        created_at=schemas.utc(record.created),
        url=url,
        url_expires_at=schemas.utc(record.expires),
        file_path=record.file_path,
        created_new=created_new,
        expires_at=schemas.utc(record.expires),
    ).dump()


def _output_asset_body(v2: V2, request: web.Request, job: JobRecord, item: OutputFile) -> dict[str, Any]:
    out = render.output(v2.key, job, item, v2.ext(request))
    return schemas.Asset(
        id=out.id,
        hash=None,
        size_bytes=item.size_bytes,
        content_type=item.content_type,
        created_at=schemas.utc(item.created),
        url=out.url,
        url_expires_at=out.url_expires_at,
        file_path=item.name,
        expires_at=schemas.utc(job.expires),
        job_id=job.id,
    ).dump()


async def _text_part(part: BodyPartReader) -> str:
    data = await part.read_chunk(TEXT_FIELD_LIMIT + 1)
    if len(data) > TEXT_FIELD_LIMIT:
        raise invalid_request(f"the form field {part.name!r} is too long")
    return data.decode("utf-8", "replace").strip()


@documented(docs.UPLOAD)
async def upload(request: web.Request) -> web.Response:
    v2 = request.app[V2_KEY]
    if not request.content_type.startswith("multipart/form-data"):
        raise V2Error(422, "invalid_request", "the upload must be multipart/form-data")
    limit = v2.max_body_bytes
    if v2.assets.max_bytes > 0:
        limit = min(limit, v2.assets.max_bytes)
    in_use = v2.store.assets_in_use()
    fields: dict[str, str] = {}
    writer = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "file" and writer is None:
                writer = v2.assets.writer(limit)
                while chunk := await part.read_chunk(256 * 1024):
                    writer.write(chunk)
            elif part.name in ("content_type", "file_path", "expected_hash", "expires_in"):
                fields[part.name] = await _text_part(part)
            else:
                await part.release()
        if writer is None or not fields.get("file_path"):
            raise V2Error(422, "invalid_request", "the form needs a file part and a file_path field")
        file_path = check_file_path(fields["file_path"])
        expected = fields.get("expected_hash")
        if expected and expected != f"blake3:{writer.hex}":
            raise V2Error(409, "hash_mismatch", "the file's blake3 hash is not expected_hash")
        expires_in = int(fields["expires_in"]) if fields.get("expires_in", "").isdigit() else None
        hex_digest = writer.hex
        if not v2.assets.has_blob(hex_digest):
            v2.assets.make_room(writer.size, in_use)
        created_new = writer.finish()
        writer = None
    except AssetError as error:
        raise V2Error(error.status, error.code, error.message) from None
    except ValueError as error:  # a malformed multipart body
        raise V2Error(422, "invalid_request", f"malformed multipart body: {error}") from None
    finally:
        if writer is not None:
            writer.discard()
    content_type = fields.get("content_type") or "application/octet-stream"
    record = v2.assets.mint(hex_digest, content_type, file_path, expires_in)
    v2.metrics.asset_bytes.labels(kind="upload").set(v2.assets.bytes_held)
    return web.json_response(
        _asset_body(v2, request, record, created_new), status=201 if created_new else 200
    )


@documented(docs.FROM_HASH)
async def from_hash(request: web.Request) -> web.StreamResponse:
    v2 = request.app[V2_KEY]
    body = await read_json(request, schemas.FromHashRequest)
    hex_digest = body.hash.removeprefix("blake3:")
    if v2.assets.has_blob(hex_digest):
        try:
            file_path = check_file_path(body.file_path) if body.file_path else None
        except AssetError as error:
            raise V2Error(error.status, error.code, error.message) from None
        existing = v2.assets.find(hex_digest, file_path)
        if existing is not None:
            return web.json_response(_asset_body(v2, request, existing, False), status=200)
        source = v2.assets.find(hex_digest, None)
        record = v2.assets.mint(
            hex_digest,
            source.content_type if source else "application/octet-stream",
            file_path or (source.file_path if source else "upload.bin"),
            body.expires_in,
        )
        return web.json_response(_asset_body(v2, request, record, False), status=201)
    if HOP_HEADER not in request.headers:
        holder = await _peer_with_blob(v2, body.hash)
        if holder is not None:
            return await v2.forward(request, holder)
    raise V2Error(404, "blob_not_found", "no blob with this hash")


async def _peer_with_blob(v2: V2, hash_text: str) -> str | None:
    answers = await v2.client.scatter("HEAD", f"/api/v2/assets/by-hash/{hash_text}")
    for answer in answers:
        if answer.status == 200:
            return v2.peers.url(answer.name)
    return None


@documented(docs.BY_HASH)
async def by_hash(request: web.Request) -> web.Response:
    v2 = request.app[V2_KEY]
    hash_text = request.match_info["hash"]
    if not _HASH.match(hash_text):
        return web.Response(status=404)
    if v2.assets.has_blob(hash_text.removeprefix("blake3:")):
        return web.Response(status=200)
    if HOP_HEADER not in request.headers and await _peer_with_blob(v2, hash_text) is not None:
        return web.Response(status=200)
    return web.Response(status=404)


async def _local(
    v2: V2, request: web.Request
) -> AssetRecord | tuple[JobRecord, OutputFile] | web.StreamResponse:
    asset_id = request.match_info["asset_id"]
    where = await locate(v2, request, asset_id, ("asset", "output"), "asset")
    if where.where == "remote":
        return await v2.forward(request, where.url)
    if where.where == "lost":
        raise V2Error(404, "not_found", "the pod that held this asset is gone")
    parsed = where.parsed
    if parsed.kind == "asset":
        record = v2.assets.get(asset_id)
        if record is None:
            raise not_found("asset")
        return record
    job = v2.store.get_v2(ids.encode(v2.key, parsed.job()))
    item = next((o for o in job.outputs if o.index == parsed.index), None) if job else None
    if job is None or item is None:
        raise not_found("asset")
    return job, item


@documented(docs.ASSET_GET)
async def get_asset(request: web.Request) -> web.StreamResponse:
    v2 = request.app[V2_KEY]
    found = await _local(v2, request)
    if isinstance(found, web.StreamResponse):
        return found
    if isinstance(found, AssetRecord):
        return web.json_response(_asset_body(v2, request, found))
    return web.json_response(_output_asset_body(v2, request, *found))


@documented(docs.ASSET_DELETE)
async def delete_asset(request: web.Request) -> web.StreamResponse:
    v2 = request.app[V2_KEY]
    found = await _local(v2, request)
    if isinstance(found, web.StreamResponse):
        return found
    if isinstance(found, AssetRecord):
        if found.id in v2.store.assets_in_use():
            raise V2Error(409, "asset_in_use", "the asset is in use")
        v2.assets.delete(found)
        v2.metrics.asset_bytes.labels(kind="upload").set(v2.assets.bytes_held)
    else:
        job, item = found
        if v2.store.remove_output(job, item):
            v2.runner.delete_files([item])
    return web.Response(status=204)


@documented(docs.CONTENT)
async def content(request: web.Request) -> web.StreamResponse:
    v2 = request.app[V2_KEY]
    found = await _local(v2, request)
    if isinstance(found, web.StreamResponse):
        return found
    headers = dict(CONTENT_HEADERS)
    if isinstance(found, AssetRecord):
        headers["Content-Type"] = found.content_type
        return web.FileResponse(v2.assets.blob_path(found.hex), headers=headers)
    _, item = found
    headers["Content-Type"] = item.content_type
    if item.text is not None:
        return _bytes_response(request, item.text.encode(), headers)
    path = v2.runner.file_path(item)
    if path is None or not await asyncio.to_thread(path.is_file):
        raise V2Error(404, "not_found", "the output file is gone")
    return web.FileResponse(path, headers=headers)


def _bytes_response(request: web.Request, data: bytes, headers: dict[str, str]) -> web.Response:
    """In-memory content with one `bytes=a-b` range (outputs that are text values)."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    match = _RANGE.match(request.headers.get("Range", ""))
    if not match or not (match.group(1) or match.group(2)):
        return web.Response(body=data, headers=headers)
    first, last = match.group(1), match.group(2)
    start = int(first) if first else max(0, len(data) - int(last))
    end = min(len(data) - 1, int(last)) if first and last else len(data) - 1
    if start >= len(data) or start > end:
        return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return web.Response(status=206, body=data[start : end + 1], headers=headers)


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v2/assets", upload),
        web.post("/api/v2/assets/from-hash", from_hash),
        web.get("/api/v2/assets/by-hash/{hash}", by_hash),  # HEAD as the SDK sends it, and GET
        web.get("/api/v2/assets/{asset_id}", get_asset, allow_head=False),
        web.delete("/api/v2/assets/{asset_id}", delete_asset),
        web.get("/api/v2/assets/{asset_id}/content", content),
    ]
