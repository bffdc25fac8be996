"""`comfyui-sidecar sync` (the ComfyUIModelLibrary's Job) for real: the CLI as a process against a local file
server, a local S3 server (moto, its own process) and a directory as the library volume. Resume after a cut
connection, a hash mismatch, an idempotent re-run that downloads nothing, every bad input as a failure of its
model only, pruning only when asked, and a full volume (see the two tests at the end for how it is made)."""

# ruff: noqa: F811  (pytest fixtures imported from other modules are redefined as arguments)

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cache_fileserver import FileServer, file_server, start_app  # noqa: F401 (fixture)
from comfyui_sidecar.cache import partfile
from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.library.manifest import LibraryManifest
from comfyui_sidecar.library.report import SyncReport, decode
from comfyui_sidecar.library.sync import EXIT_OK, EXIT_PERMANENT, EXIT_RETRY, run_sync
from s3_server import BUCKET, REGION, S3Server, s3_server  # noqa: F401 (fixture)
from tier import tool_missing

MIB = 1 << 20


def blob(size: int, seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


async def run_cli(
    tmp_path: Path, models: list[dict[str, Any]], *, env: dict[str, str] | None = None, **manifest: Any
) -> tuple[int, SyncReport, str]:
    """Run `comfyui-sidecar sync` as a process; (exit code, decoded report, log)."""
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_text(json.dumps({"models": models, **manifest}))
    report_file = tmp_path / "termination-log"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "comfyui_sidecar",
        "sync",
        "--manifest",
        str(manifest_file),
        "--root",
        str(tmp_path / "library"),
        "--report",
        str(report_file),
        env={
            **os.environ,
            "DOWNLOAD_ALLOW_NETWORKS": "127.0.0.1/32",
            "DOWNLOAD_ATTEMPTS": "3",
            "DOWNLOAD_BACKOFF_SECONDS": "0.01",
            "DOWNLOAD_CONNECT_TIMEOUT_SECONDS": "2",
            **(env or {}),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    text = report_file.read_text()
    assert len(text.encode()) <= 4096
    report = decode(text)
    assert report is not None, text
    assert process.returncode is not None
    return process.returncode, report, out.decode()


def library_files(tmp_path: Path) -> dict[str, bytes]:
    root = tmp_path / "library"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".sync" not in p.relative_to(root).parts
    }


def leftovers(tmp_path: Path) -> list[str]:
    return [p.name for p in (tmp_path / "library" / ".sync" / "tmp").iterdir()]


async def test_http_and_s3_models_land_verified_and_a_rerun_downloads_nothing(
    tmp_path: Path, file_server: FileServer, s3_server: S3Server
) -> None:
    a, b, c = blob(3 * MIB, 1), blob(100_000, 2), blob(2 * MIB, 3)
    sha_a = file_server.add("a.safetensors", a)
    file_server.add("b.pt", b)
    s3_server.client().put_object(Bucket=BUCKET, Key="lib/c.safetensors", Body=c)  # type: ignore[attr-defined]
    models = [
        {
            "url": file_server.url("/files/a.safetensors"),
            "target": "checkpoints/a.safetensors",
            "sha256": sha_a,
        },
        {"url": file_server.url("/files/b.pt"), "target": "upscale_models/sub/b.pt"},
        {"url": f"s3://{BUCKET}/lib/c.safetensors", "target": "loras/c.safetensors"},
    ]
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint,
        "AWS_REGION": REGION,
    }
    code, report, log = await run_cli(tmp_path, models, env=env)
    assert code == EXIT_OK, log
    assert [m.phase for m in report.models] == ["Ready"] * 3, report
    assert all(m.downloaded for m in report.models)
    assert report.models[1].sha256 == hashlib.sha256(b).hexdigest()
    assert report.models[2].size == len(c)
    assert library_files(tmp_path) == {
        "checkpoints/a.safetensors": a,
        "upscale_models/sub/b.pt": b,
        "loras/c.safetensors": c,
    }
    assert leftovers(tmp_path) == []
    gets = dict(file_server.gets)

    code, again, log = await run_cli(tmp_path, models, env=env)
    assert code == EXIT_OK, log
    assert [m.phase for m in again.models] == ["Ready"] * 3
    assert not any(m.downloaded for m in again.models), "the re-run downloaded a model again"
    assert dict(file_server.gets) == gets, "the re-run sent requests to the file server"
    assert [m.sha256 for m in again.models][1:] == [m.sha256 for m in report.models][1:]


async def test_a_cut_connection_resumes_with_range(tmp_path: Path, file_server: FileServer) -> None:
    data = blob(6 * MIB, 4)
    sha = file_server.add("big.safetensors", data)
    file_server.cut_next["big.safetensors"] = 1
    models = [
        {
            "url": file_server.url("/cut/big.safetensors"),
            "target": "checkpoints/big.safetensors",
            "sha256": sha,
        }
    ]
    code, report, log = await run_cli(tmp_path, models)
    assert code == EXIT_OK, log
    assert file_server.range_requests, "the second attempt did not resume with a Range request"
    assert file_server.range_requests[0] != "bytes=0-"
    assert library_files(tmp_path)["checkpoints/big.safetensors"] == data
    assert report.models[0].phase == "Ready"


async def test_a_hash_mismatch_fails_that_model_and_keeps_the_file_that_was_there(
    tmp_path: Path, file_server: FileServer
) -> None:
    file_server.add("new.safetensors", blob(MIB, 5))
    good = blob(50_000, 6)
    file_server.add("good.pt", good)
    old = tmp_path / "library" / "checkpoints" / "model.safetensors"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"the previous model")
    wrong = "0" * 64
    models = [
        {
            "url": file_server.url("/files/new.safetensors"),
            "target": "checkpoints/model.safetensors",
            "sha256": wrong,
        },
        {"url": file_server.url("/files/good.pt"), "target": "vae/good.pt"},
    ]
    code, report, _ = await run_cli(tmp_path, models)
    assert code == EXIT_PERMANENT  # another attempt would download the same bytes: needs a spec change
    failed, ready = report.models
    assert failed.phase == "Failed"
    assert "sha256 mismatch" in failed.message, failed
    assert wrong in failed.message
    assert not failed.retryable
    assert failed.size == MIB  # the bytes it fetched before the check
    assert ready.phase == "Ready"
    assert old.read_bytes() == b"the previous model"
    assert library_files(tmp_path)["vae/good.pt"] == good
    assert leftovers(tmp_path) == []


async def test_bad_inputs_fail_their_model_only(tmp_path: Path, file_server: FileServer) -> None:
    good = blob(10_000, 7)
    file_server.add("good.pt", good)
    file_server.add("x.pt", b"x")
    outside = tmp_path / "escaped.pt"
    url = file_server.url("/files/x.pt")
    models = [
        {"url": "http://127.0.0.1:9/nothing.pt", "target": "vae/unreachable.pt"},
        {"url": url, "target": "checkpoints/../../escaped.pt"},
        {"url": url, "target": "no_such_folder/x.pt"},
        {"url": url, "target": "unet/x.pt"},
        {"url": "ftp://example.com/x.pt", "target": "vae/ftp.pt"},
        {"url": file_server.url("/files/missing.pt"), "target": "vae/missing.pt"},
        {"url": url, "target": "vae/x.pt", "revision": "abc"},
        {"url": file_server.url("/files/good.pt"), "target": "vae/good.pt"},
    ]
    code, report, log = await run_cli(tmp_path, models)
    assert code == EXIT_RETRY, log  # the unreachable host may come back; the others need a spec change
    messages = [m.message for m in report.models]
    assert [m.phase for m in report.models] == ["Failed"] * 7 + ["Ready"], messages
    unreachable, traversal, unknown, legacy, ftp, missing, revision = report.models[:7]
    assert unreachable.retryable
    assert "Error downloading file" in unreachable.message
    assert "unsafe path segment '..'" in traversal.message
    assert "unknown model folder 'no_such_folder'" in unknown.message
    assert "checkpoints" in unknown.message
    assert "use 'diffusion_models'" in legacy.message
    assert "supported schemes: http, https, s3" in ftp.message
    assert "Not Found (HTTP 404)" in missing.message
    assert not missing.retryable
    assert "Hugging Face URLs only" in revision.message
    assert not outside.exists()
    assert library_files(tmp_path) == {"vae/good.pt": good}
    assert leftovers(tmp_path) == []


async def test_removed_models_are_pruned_only_when_asked(tmp_path: Path, file_server: FileServer) -> None:
    file_server.add("a.pt", b"a" * 100)
    file_server.add("b.pt", b"b" * 100)
    a = {"url": file_server.url("/files/a.pt"), "target": "vae/a.pt"}
    b = {"url": file_server.url("/files/b.pt"), "target": "vae/b.pt"}
    assert (await run_cli(tmp_path, [a, b]))[0] == EXIT_OK
    by_hand = tmp_path / "library" / "vae" / "by-hand.pt"
    by_hand.write_bytes(b"placed by an admin")

    code, report, _ = await run_cli(tmp_path, [a])
    assert code == EXIT_OK
    assert report.pruned == 0
    assert set(library_files(tmp_path)) == {"vae/a.pt", "vae/b.pt", "vae/by-hand.pt"}

    code, report, _ = await run_cli(tmp_path, [a], prune=True)
    assert code == EXIT_OK
    assert report.pruned == 1
    assert set(library_files(tmp_path)) == {"vae/a.pt", "vae/by-hand.pt"}  # never a file it did not write


async def test_a_file_placed_by_hand_with_the_right_sha256_is_adopted(
    tmp_path: Path, file_server: FileServer
) -> None:
    data = blob(200_000, 8)
    sha = file_server.add("m.pt", data)
    placed = tmp_path / "library" / "vae" / "m.pt"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(data)
    models = [{"url": file_server.url("/files/m.pt"), "target": "vae/m.pt", "sha256": sha}]
    code, report, _ = await run_cli(tmp_path, models)
    assert code == EXIT_OK
    assert report.models[0].phase == "Ready"
    assert not report.models[0].downloaded
    assert file_server.gets == {}


# ---- a full volume --------------------------------------------------------------------------------------
# Three ways: (1) a real small tmpfs as the library volume (needs root and mount; skipped elsewhere): a model
# larger than its free space is refused before a byte is written, and a real ENOSPC in the middle of a
# download (another writer fills the volume meanwhile) fails that model; (2) the statvfs check on the
# test's own file system, with a server announcing 1 EiB; (3) PartFile given an `os` whose writev fails
# with ENOSPC after the first batch, what the kernel answers on a full volume (runs without root).


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "library"
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(root)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        tool_missing(f"can not mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


async def test_a_real_small_volume_refuses_a_big_model_and_a_volume_filled_meanwhile_fails_its_model(
    tmp_path: Path, small_volume: Path, file_server: FileServer
) -> None:
    file_server.add("big.safetensors", blob(60 * MIB, 10))
    file_server.add("slow.safetensors", blob(12 * MIB, 11))
    file_server.add("small.pt", b"s" * 1000)
    models = [
        {"url": file_server.url("/files/small.pt"), "target": "vae/small.pt"},
        {"url": file_server.url("/files/big.safetensors"), "target": "checkpoints/big.safetensors"},
        {"url": file_server.url("/slow/slow.safetensors"), "target": "checkpoints/slow.safetensors"},
    ]
    filler = small_volume / "filler"

    async def fill_while_downloading() -> None:
        parts = small_volume / ".sync" / "tmp"
        for _ in range(400):
            if parts.is_dir() and any(parts.iterdir()) and file_server.gets["/slow/slow.safetensors"]:
                break
            await asyncio.sleep(0.02)
        free = os.statvfs(small_volume).f_bavail * os.statvfs(small_volume).f_frsize
        with filler.open("wb") as handle:
            handle.write(b"\0" * (free - 256 * 1024))

    file_server.slow_delay = 0.05
    filling = asyncio.create_task(fill_while_downloading())
    code, report, log = await run_cli(tmp_path, models, env={"DOWNLOAD_ATTEMPTS": "1"})
    await filling
    small, big, slow = report.models
    assert code == EXIT_RETRY, log
    assert big.phase == "Failed"
    assert big.message.startswith(f"volume full: {60 * MIB} bytes needed"), big
    assert big.size == 0
    assert slow.phase == "Failed", slow
    assert slow.message.startswith("volume full: writing checkpoints/slow.safetensors failed after"), slow
    assert "No space left on device" in slow.message
    assert small.phase == "Ready"
    filler.unlink()
    assert set(library_files(tmp_path)) == {"vae/small.pt"}
    assert leftovers(tmp_path) == []


async def test_a_model_larger_than_the_free_space_of_the_disk_fails_before_writing(
    tmp_path: Path, file_server: FileServer
) -> None:
    huge = 1 << 60  # announced, never sent

    async def announce(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(huge)})
        await response.prepare(request)
        return response

    app = web.Application()
    app.router.add_get("/huge.safetensors", announce)
    runner, base = await start_app(app)
    file_server.add("small.pt", b"s" * 1000)
    try:
        models = [
            {"url": f"{base}/huge.safetensors", "target": "checkpoints/huge.safetensors"},
            {"url": file_server.url("/files/small.pt"), "target": "vae/small.pt"},
        ]
        code, report, log = await run_cli(tmp_path, models, env={"DOWNLOAD_MAX_BYTES": "4Ei"})
    finally:
        await runner.cleanup()
    assert code == EXIT_RETRY, log
    full, small = report.models
    assert full.phase == "Failed"
    assert full.retryable
    assert full.message.startswith(f"volume full: {huge} bytes needed for checkpoints/huge.safetensors")
    assert full.size == 0
    assert small.phase == "Ready"
    assert set(library_files(tmp_path)) == {"vae/small.pt"}


@pytest.fixture
def disk_fills_up(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """PartFile's writes fail with ENOSPC once 4 MiB are on disk (the first batch goes through)."""
    written = [0]

    def writev(fd: int, buffers: list[memoryview]) -> int:
        if written[0] >= 4 * MIB:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        count = os.writev(fd, buffers)
        written[0] += count
        return count

    proxy = types.SimpleNamespace(
        **{name: getattr(os, name) for name in dir(os) if not name.startswith("__")}
    )
    proxy.writev = writev
    monkeypatch.setattr(partfile, "os", proxy)
    return written


async def test_a_volume_that_fills_up_while_writing_fails_that_model_with_nothing_half_written(
    tmp_path: Path, file_server: FileServer, disk_fills_up: list[int]
) -> None:
    file_server.add("big.safetensors", blob(12 * MIB, 9))
    models = [{"url": file_server.url("/files/big.safetensors"), "target": "checkpoints/big.safetensors"}]
    settings = CacheSettings(download_allow_networks=["127.0.0.1/32"], download_attempts=1)
    lines: list[str] = []
    report = await run_sync(
        LibraryManifest.model_validate({"models": models}), tmp_path / "library", settings, lines.append
    )
    (model,) = report.models
    assert model.phase == "Failed"
    assert model.retryable
    assert model.message.startswith("volume full: writing checkpoints/big.safetensors failed after"), model
    assert "No space left on device" in model.message
    assert disk_fills_up[0] >= 4 * MIB  # the first batch, then nothing more
    assert decode(lines[-1]) == report
    assert library_files(tmp_path) == {}
    assert leftovers(tmp_path) == []
