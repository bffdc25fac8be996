"""The cache over real HTTP against a local file server (loopback allowed explicitly)."""

# ruff: noqa: F811  (pytest fixtures imported from cache_fileserver are redefined as arguments)

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from cache_fileserver import FileServer, disk_usage, file_server, make_cache  # noqa: F401 (fixtures)
from comfyui_sidecar.cache import CacheSettings, ModelCache
from comfyui_sidecar.cache.lru import footprint
from comfyui_sidecar.cache.manifest import ManifestError, ManifestPreload
from comfyui_sidecar.cache.naming import url_hash
from comfyui_sidecar.cache.partfile import PartFile
from comfyui_sidecar.fetching import BearerAuth, Credential, Fetch, FetchError


def model(url: str, folder: str = "checkpoints", node: str = "1") -> Fetch:
    return Fetch(url=url, node_id=node, input_name="ckpt_name", kind="model", folder=folder)


def media(url: str, folder: str = "", node: str = "2") -> Fetch:
    return Fetch(url=url, node_id=node, input_name="image", kind="input", folder=folder)


def all_names(root: Path) -> set[str]:
    return {name for _, dirs, files in os.walk(root) for name in dirs + files}


def no_dangling_links(*roots: Path) -> list[Path]:
    bad = []
    for root in roots:
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                p = Path(dirpath) / name
                if p.is_symlink() and not p.exists():
                    bad.append(p)
    return bad


async def test_model_url_cached_under_the_formula_name_and_linked(
    file_server: FileServer, make_cache
) -> None:
    data = os.urandom(300_000)
    sha = file_server.add("model.safetensors", data)
    cache: ModelCache = await make_cache()
    url = file_server.url("/files/model.safetensors?download=true")
    item = model(url)
    async with cache.pin([item], []) as resolved:
        name = resolved[item]
        assert name == url_hash(url) + ".safetensors"
        link = cache.models_root / "checkpoints" / name
        assert link.is_symlink()
        assert link.read_bytes() == data
        assert not os.path.isabs(os.readlink(link))  # relative: works wherever the cache is mounted
        assert cache.index.get(name) is not None
        assert cache.index.get(name).pins == 1
    assert cache.index.get(name).pins == 0  # type: ignore[union-attr]
    meta = json.loads((cache.blobs / f"{name}.meta").read_text())
    assert meta["sha256"] == sha
    assert meta["size"] == len(data)
    assert meta["authRequired"] is False
    assert meta["url"] == url
    assert list(cache.tmp.iterdir()) == []


async def test_media_input_linked_into_the_input_dir(
    file_server: FileServer, make_cache, tmp_path: Path
) -> None:
    file_server.add("pic.png", b"\x89PNG fake", ctype="image/png")
    cache: ModelCache = await make_cache()
    url = file_server.url("/files/pic.png")
    a, b = media(url), media(url, folder="req-1", node="3")
    async with cache.pin([a, b], []) as resolved:
        assert resolved[a] == url_hash(url) + ".png"
        assert resolved[b] == "req-1/" + url_hash(url) + ".png"
        assert (tmp_path / "input" / resolved[b]).read_bytes() == b"\x89PNG fake"
    assert file_server.gets["/files/pic.png"] == 1


async def test_extension_from_disposition_then_mime(file_server: FileServer, make_cache) -> None:
    file_server.add("weights", b"a" * 10, disposition='attachment; filename="real.ckpt"')
    file_server.add("blob", b"b" * 10)
    file_server.add("photo", b"c" * 10, ctype="image/jpeg")
    cache: ModelCache = await make_cache()
    urls = [file_server.url(f"/noext/{n}") for n in ("weights", "blob", "photo")]
    items = [model(u) for u in urls]
    async with cache.pin(items, []) as resolved:
        assert [resolved[i] for i in items] == [
            url_hash(urls[0]) + ".ckpt",
            url_hash(urls[1]) + ".bin",
            url_hash(urls[2]) + ".jpg",
        ]


async def test_traversal_in_content_disposition_is_neutralised(
    file_server: FileServer, make_cache, tmp_path: Path
) -> None:
    file_server.add("evil", b"x" * 10, disposition='attachment; filename="../../../../tmp/evil.safetensors"')
    file_server.add("evil2", b"y" * 10, disposition="attachment; filename*=UTF-8''..%2F..%2Fescape.pt")
    cache: ModelCache = await make_cache()
    items = [model(file_server.url("/noext/evil")), model(file_server.url("/noext/evil2"))]
    async with cache.pin(items, []) as resolved:
        assert resolved[items[0]].endswith(".safetensors")
        assert "/" not in resolved[items[0]]
        assert resolved[items[1]].endswith(".pt")
        assert "/" not in resolved[items[1]]
    written = all_names(tmp_path)
    assert "evil.safetensors" not in written
    assert "escape.pt" not in written
    # an override file name with traversal is reduced to a basename inside the model folder
    done = await cache.download(file_server.url("/noext/evil"), folder="loras", filename="../../../x.pt")
    assert done.link == cache.models_root / "loras" / "x.pt"
    assert done.link.read_bytes() == b"x" * 10


async def test_sixteen_concurrent_pins_cause_one_get(file_server: FileServer, make_cache) -> None:
    data = os.urandom(1 << 20)
    file_server.add("big.safetensors", data)
    cache: ModelCache = await make_cache()
    url = file_server.url("/slow/big.safetensors")

    async def one(i: int) -> str:
        item = model(url, node=str(i))
        async with cache.pin([item], []) as resolved:
            return resolved[item]

    names = await asyncio.gather(*(one(i) for i in range(16)))
    assert len(set(names)) == 1
    assert file_server.gets["/slow/big.safetensors"] == 1
    assert (cache.blobs / names[0]).read_bytes() == data


async def test_cut_download_leaves_no_entry_and_a_retry_succeeds(file_server: FileServer, make_cache) -> None:
    data = os.urandom(512 * 1024)
    file_server.add("cut.safetensors", data)
    file_server.cut_next["cut.safetensors"] = 100  # every attempt is cut
    cache: ModelCache = await make_cache(download_attempts=2)
    url = file_server.url("/cut/cut.safetensors")
    with pytest.raises(FetchError) as err:
        async with cache.pin([model(url)], []):
            pass
    assert "Error downloading file" in err.value.message
    assert cache.index.entries == {}
    assert list(cache.blobs.iterdir()) == []
    assert list(cache.tmp.iterdir()) == []
    assert list((cache.models_root / "checkpoints").iterdir()) == []
    file_server.cut_next["cut.safetensors"] = 0
    async with cache.pin([model(url)], []) as resolved:
        assert (cache.models_root / "checkpoints" / resolved[model(url)]).read_bytes() == data


async def test_cut_once_resumes_with_range(file_server: FileServer, make_cache) -> None:
    data = os.urandom(400_000)
    sha = file_server.add("resume.safetensors", data)
    file_server.cut_next["resume.safetensors"] = 1
    cache: ModelCache = await make_cache()
    url = file_server.url("/cut/resume.safetensors")
    async with cache.pin([model(url)], []) as resolved:
        entry = cache.index.get(resolved[model(url)])
        assert entry is not None
        assert entry.sha256 == sha
        assert entry.size == len(data)
    assert file_server.gets["/cut/resume.safetensors"] == 2
    assert len(file_server.range_requests) == 1
    assert file_server.range_requests[0] != "bytes=0-"


async def test_eviction_keeps_disk_under_budget_and_leaves_no_dangling_link(
    file_server: FileServer, make_cache, tmp_path: Path
) -> None:
    size = 256 * 1024
    for i in range(8):
        file_server.add(f"m{i}.safetensors", os.urandom(size))
    budget = 3 * footprint(size)
    cache: ModelCache = await make_cache(lru_cache_size_gb=budget / 1024**3)
    assert cache.index.budget == budget
    file_server.slow_delay = 0.005
    samples: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        for _ in range(20_000):
            if stop.is_set():
                return
            samples.append(disk_usage(cache.root))
            assert cache.index.used() <= budget
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    urls = [file_server.url(f"/slow/m{i}.safetensors") for i in range(8)]
    for batch in (urls[0:2], urls[2:4], urls[4:6], urls[6:8]):
        items = [model(u, folder="loras") for u in batch]
        async with cache.pin(items, []) as resolved:
            for item in items:
                assert (cache.models_root / "loras" / resolved[item]).exists()
    stop.set()
    await sampler
    assert len(samples) > 10
    assert max(samples) <= budget
    assert len(cache.index.entries) <= 3
    assert no_dangling_links(cache.models_root, tmp_path / "input") == []
    remaining = {p.name for p in (cache.models_root / "loras").iterdir()}
    assert remaining == set(cache.index.entries)


async def test_pinned_files_are_not_evicted(file_server: FileServer, make_cache) -> None:
    size = 200_000
    file_server.add("a.pt", os.urandom(size))
    file_server.add("b.pt", os.urandom(size))
    cache: ModelCache = await make_cache(lru_cache_size_gb=(footprint(size) + 1000) / 1024**3)
    a, b = model(file_server.url("/files/a.pt")), model(file_server.url("/files/b.pt"))
    async with cache.pin([a], []) as resolved:
        with pytest.raises(FetchError) as err:
            async with cache.pin([b], []):
                pass
        assert "pinned by running prompts" in err.value.message
        assert (cache.models_root / "checkpoints" / resolved[a]).exists()
    async with cache.pin([b], []):
        pass
    assert [e.name.split(".")[0] for e in cache.index.entries.values()] == [url_hash(b.url)]


async def test_file_larger_than_budget_is_refused(file_server: FileServer, make_cache) -> None:
    file_server.add("huge.pt", os.urandom(300_000))
    cache: ModelCache = await make_cache(lru_cache_size_gb=100_000 / 1024**3)
    with pytest.raises(FetchError) as err:
        async with cache.pin([model(file_server.url("/files/huge.pt"))], []):
            pass
    assert "larger than the cache budget" in err.value.message
    assert list(cache.blobs.iterdir()) == []
    assert list(cache.tmp.iterdir()) == []


async def test_maximum_response_size_cuts_off(file_server: FileServer, make_cache) -> None:
    file_server.add("stream.bin", os.urandom(300_000))
    file_server.add("sized.bin", os.urandom(300_000))
    cache: ModelCache = await make_cache(download_max_bytes=100_000)
    for path in ("/chunked/stream.bin", "/files/sized.bin"):
        with pytest.raises(FetchError) as err:
            async with cache.pin([model(file_server.url(path))], []):
                pass
        assert "maximum download size" in err.value.message
    assert list(cache.tmp.iterdir()) == []
    assert cache.index.entries == {}


async def test_not_found_is_a_clear_error(file_server: FileServer, make_cache) -> None:
    cache: ModelCache = await make_cache()
    with pytest.raises(FetchError) as err:
        async with cache.pin([model(file_server.url("/files/missing.pt"))], []):
            pass
    assert err.value.message == "Error downloading file: Not Found (HTTP 404)"
    assert file_server.gets["/files/missing.pt"] == 1  # 4xx is not retried


async def test_auth_required_rule_on_cache_hits(file_server: FileServer, make_cache) -> None:
    file_server.add("private.safetensors", b"secret weights")
    cache: ModelCache = await make_cache()
    url = file_server.url("/auth/private.safetensors")
    good = [
        Credential(url_pattern=f"{file_server.base}/auth/**", auth=BearerAuth(type="bearer", token="s3cret"))
    ]
    bad = [Credential(url_pattern="http://127.0.0.1:*/auth/*", auth=BearerAuth(type="bearer", token="nope"))]
    with pytest.raises(FetchError) as err:
        async with cache.pin([model(url)], []):
            pass
    assert "Unauthorized" in err.value.message
    async with cache.pin([model(url)], good) as resolved:
        assert cache.index.get(resolved[model(url)]).auth_required  # type: ignore[union-attr]
    with pytest.raises(FetchError) as err:
        async with cache.pin([model(url)], []):
            pass
    assert err.value.message == f"Authentication required to access cached file for URL: {url}"
    with pytest.raises(FetchError) as err:
        async with cache.pin([model(url)], bad):
            pass
    assert err.value.message.startswith("Authentication failed: 401")
    async with cache.pin([model(url)], good):
        pass
    assert "s3cret" not in json.dumps([str(p) for p in cache.root.rglob("*")])


async def test_state_is_rebuilt_from_disk(file_server: FileServer, make_cache, tmp_path: Path) -> None:
    file_server.add("keep.safetensors", b"k" * 1000)
    first: ModelCache = await make_cache()
    url = file_server.url("/files/keep.safetensors")
    async with first.pin([model(url), media(url)], []) as resolved:
        name = resolved[model(url)]
    await first.close()
    (first.tmp / "abandoned.part").write_bytes(b"partial")
    (first.blobs / "orphan.bin").write_bytes(b"no meta")
    dangling = first.models_root / "vae" / "gone.pt"
    dangling.symlink_to("../../blobs/gone.pt")
    second: ModelCache = await make_cache()
    assert list(second.index.entries) == [name]
    assert not (second.tmp / "abandoned.part").exists()
    assert not (second.blobs / "orphan.bin").exists()
    assert not dangling.is_symlink()
    async with second.pin([model(url)], []) as again:
        assert again[model(url)] == name
    assert file_server.gets["/files/keep.safetensors"] == 1
    # the rebuilt cache knows the old links: evicting the entry removes both of them
    assert len(second.layout.links[name]) == 2
    second.layout.delete_entry_files(second.index.remove(name))  # type: ignore[arg-type]
    assert no_dangling_links(second.models_root, tmp_path / "input") == []


async def test_extra_model_paths_yaml_lists_the_cache_roots(make_cache) -> None:
    cache: ModelCache = await make_cache(extra_model_folders=["ipadapter"])
    doc = yaml.safe_load(cache.settings.model_paths_file().read_text())
    section = doc["cache_models"]
    assert section["base_path"] == str(cache.models_root)
    assert section["checkpoints"] == "checkpoints/"
    assert section["ipadapter"] == "ipadapter/"
    assert (cache.models_root / "ipadapter").is_dir()


async def test_sha256_is_computed_while_streaming(file_server: FileServer, make_cache) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    file_server.add("x.safetensors", data)
    cache: ModelCache = await make_cache()
    url = file_server.url("/files/x.safetensors")
    done = await cache.download(url, folder="checkpoints")
    assert done.entry.sha256 == hashlib.sha256(data).hexdigest()
    assert done.link_name == url_hash(url) + ".safetensors"


async def test_manifest_before_start_is_downloaded_by_preload(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.add("early.safetensors", b"e" * 100)
    file_server.add("late.safetensors", b"l" * 100)
    manifest = {
        "apt": ["ffmpeg"],
        "models": {
            "before_start": [
                {
                    "url": file_server.url("/files/early.safetensors"),
                    "local_path": "/opt/ComfyUI/models/vae/e.pt",
                },
                {"url": file_server.url("/files/missing.pt"), "local_path": "loras/m.pt"},
            ],
            "after_start": [
                {"url": file_server.url("/slow/late.safetensors"), "local_path": "loras/late.safetensors"}
            ],
        },
    }
    settings = CacheSettings(
        cache_dir=tmp_path / "cache",
        download_allow_networks=["127.0.0.1/32"],
        manifest_json=json.dumps(manifest),
    )
    cache = ModelCache(settings, input_dir=tmp_path / "input")
    try:
        run = ManifestPreload.load(cache, settings)
        await cache.start()
        assert not (cache.models_root / "vae" / "e.pt").exists()  # start() does not download
        await run.preload()
        assert (cache.models_root / "vae" / "e.pt").read_bytes() == b"e" * 100  # done before preload returned
        assert run.errors == ["Error downloading file: Not Found (HTTP 404)"]
        late = cache.models_root / "loras" / "late.safetensors"
        for _ in range(200):
            if late.exists():
                break
            await asyncio.sleep(0.02)
        assert late.read_bytes() == b"l" * 100
    finally:
        await cache.close()


async def test_invalid_manifest_stops_start(tmp_path: Path) -> None:
    settings = CacheSettings(
        cache_dir=tmp_path / "cache", manifest_json='{"models": {"before_start": [{"url": 1}]}}'
    )
    cache = ModelCache(settings, input_dir=tmp_path / "input")
    with pytest.raises(ManifestError, match="invalid model manifest"):
        ManifestPreload.load(cache, settings)
    assert not (tmp_path / "cache").exists()  # nothing was opened
    await cache.close()


async def test_a_stalled_server_times_out_clearly(file_server: FileServer, make_cache) -> None:
    file_server.add("stuck.pt", os.urandom(200_000))
    file_server.stall_seconds = 1.5
    cache: ModelCache = await make_cache(download_read_timeout_seconds=0.3, download_attempts=2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(FetchError) as err:
        async with cache.pin([model(file_server.url("/stall/stuck.pt"))], []):
            pass
    assert loop.time() - start < 1.3  # bounded by the read timeout, not by the server
    assert "Error downloading file" in err.value.message
    assert file_server.gets["/stall/stuck.pt"] == 2  # retried once, resuming with Range
    assert cache.index.entries == {}
    assert list(cache.tmp.iterdir()) == []


async def test_a_cancelled_prompt_leaves_no_pin_behind(file_server: FileServer, make_cache) -> None:
    """A client that disconnects while one URL is cached and another still downloading: the cached one's pin
    (taken by its finished acquisition) is released, so it stays evictable."""
    file_server.add("hit.pt", os.urandom(10_000))
    file_server.add("big.pt", os.urandom(2_000_000))
    cache: ModelCache = await make_cache()
    hit = model(file_server.url("/files/hit.pt"))
    async with cache.pin([hit], []) as resolved:
        name = resolved[hit]

    async def prompt() -> None:
        async with cache.pin([hit, model(file_server.url("/stall/big.pt"))], []):
            pass

    task = asyncio.create_task(prompt())
    for _ in range(200):  # until the stalled download has started
        if file_server.gets.get("/stall/big.pt"):
            break
        await asyncio.sleep(0.01)
    assert cache.index.get(name).pins == 1  # type: ignore[union-attr]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert cache.index.get(name).pins == 0  # type: ignore[union-attr]


async def test_a_malformed_redirect_location_is_a_clear_error(file_server: FileServer, make_cache) -> None:
    cache: ModelCache = await make_cache()
    url = file_server.url("/redirect?raw=1&to=" + quote("http://[::1/a.pt", safe=""))
    with pytest.raises(FetchError) as err:
        async with cache.pin([model(url)], []):
            pass
    assert "Invalid URL" in err.value.message
    assert list(cache.tmp.iterdir()) == []


async def test_a_full_disk_is_a_clear_error(
    file_server: FileServer, make_cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(self: object, chunks: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    file_server.add("full.pt", os.urandom(2_000_000))
    cache: ModelCache = await make_cache()
    monkeypatch.setattr(PartFile, "_write_batch", no_space)
    with pytest.raises(FetchError) as err:
        async with cache.pin([model(file_server.url("/files/full.pt"))], []):
            pass
    assert err.value.status == 507
    assert "No space left on device" in err.value.message
    assert cache.index.reservations == {}
    assert list(cache.tmp.iterdir()) == []


async def test_no_directory_is_created_through_a_symlink_out_of_the_input_dir(
    file_server: FileServer, make_cache, tmp_path: Path
) -> None:
    file_server.add("pic.png", b"\x89PNG fake", ctype="image/png")
    cache: ModelCache = await make_cache()
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "input").mkdir(exist_ok=True)
    (tmp_path / "input" / "escape").symlink_to(outside)
    with pytest.raises(FetchError) as err:
        async with cache.pin([media(file_server.url("/files/pic.png"), folder="escape/sub")], []):
            pass
    assert "refusing to write outside" in err.value.message
    assert list(outside.iterdir()) == []


async def test_a_caller_with_credentials_does_not_share_the_failure_of_one_without(
    file_server: FileServer, make_cache
) -> None:
    file_server.add("gated.safetensors", os.urandom(50_000))
    cache: ModelCache = await make_cache()
    url = file_server.url("/auth/gated.safetensors")
    good = [Credential(url_pattern="**", auth=BearerAuth(type="bearer", token=file_server.token))]

    async def prompt(credentials: list[Credential]) -> str:
        async with cache.pin([model(url)], credentials) as resolved:
            return resolved[model(url)]

    anonymous, authorised = await asyncio.gather(prompt([]), prompt(good), return_exceptions=True)
    assert isinstance(anonymous, FetchError)
    assert "Unauthorized" in anonymous.message
    assert authorised == url_hash(url) + ".safetensors"
    assert cache.index.get(authorised).pins == 0  # type: ignore[union-attr]


async def test_concurrent_downloads_with_different_credentials_keep_one_entry_and_its_pins(
    file_server: FileServer, make_cache
) -> None:
    file_server.add("pub.safetensors", os.urandom(300_000))
    file_server.stall_seconds = 0.4
    cache: ModelCache = await make_cache()
    url = file_server.url("/stall/pub.safetensors")
    both = asyncio.Barrier(2)

    async def prompt(token: str) -> int:
        credentials = [Credential(url_pattern="**", auth=BearerAuth(type="bearer", token=token))]
        async with cache.pin([model(url)], credentials) as resolved:
            await both.wait()
            pins = cache.index.get(resolved[model(url)]).pins  # type: ignore[union-attr]
            await both.wait()
            return pins

    first = asyncio.create_task(prompt("one"))
    await asyncio.sleep(0.2)  # the second download starts while the first one is under way
    assert await asyncio.gather(first, prompt("two")) == [2, 2]
    assert file_server.gets["/stall/pub.safetensors"] == 2
    assert [e.pins for e in cache.index.entries.values()] == [0]
    assert cache.index.reservations == {}
    assert list(cache.tmp.iterdir()) == []
