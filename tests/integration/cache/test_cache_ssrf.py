"""SSRF: internal targets are refused before any byte is fetched, after DNS resolution and on redirects."""

# ruff: noqa: F811  (pytest fixtures imported from cache_fileserver are redefined as arguments)

from __future__ import annotations

from urllib.parse import quote

import pytest
from cache_fileserver import FileServer, file_server, make_cache  # noqa: F401 (fixtures)
from comfyui_sidecar.cache import ModelCache
from comfyui_sidecar.fetching import Fetch, FetchError

BLOCKED_LITERALS = [
    "http://127.0.0.1:{port}/files/a.pt",
    "http://127.1:{port}/files/a.pt",
    "http://2130706433:{port}/files/a.pt",
    "http://0x7f000001:{port}/files/a.pt",
    "http://0177.0.0.1:{port}/files/a.pt",
    "http://0x7f.0.0.1:{port}/files/a.pt",
    "http://[::1]:{port}/files/a.pt",
    "http://[::ffff:127.0.0.1]:{port}/files/a.pt",
    "http://[0:0:0:0:0:ffff:7f00:1]:{port}/files/a.pt",
    "http://0.0.0.0:{port}/files/a.pt",
    "http://[::]:{port}/files/a.pt",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[fe80::1]/x.pt",
    "http://10.0.0.1/x.pt",
    "http://172.16.5.4/x.pt",
    "http://192.168.1.1/x.pt",
    "http://100.64.0.1/x.pt",
    "http://[fc00::1]/x.pt",
    "http://[64:ff9b::7f00:1]/x.pt",
    "http://[2002:7f00:1::]/x.pt",
    "http://localhost:{port}/files/a.pt",
    "http://user:pw@127.0.0.1:{port}/files/a.pt",
]

BAD_SCHEMES = [
    ("file:///etc/passwd", "needs a scheme and a host"),
    ("file://host/etc/passwd", "No storage provider found"),
    ("ftp://example.com/a.pt", "No storage provider found"),
    ("gopher://127.0.0.1/", "No storage provider found"),
    ("data:text/plain,hi", "needs a scheme and a host"),
]


def item(url: str) -> Fetch:
    return Fetch(url=url, node_id="1", input_name="ckpt_name", kind="model", folder="checkpoints")


@pytest.fixture
async def strict_cache(make_cache) -> ModelCache:
    cache: ModelCache = await make_cache(download_allow_networks=[], download_attempts=1)
    return cache


@pytest.mark.parametrize("template", BLOCKED_LITERALS)
async def test_internal_targets_refused_without_allow_list(
    template: str, file_server: FileServer, strict_cache: ModelCache
) -> None:
    file_server.add("a.pt", b"x")
    port = file_server.base.rsplit(":", 1)[1]
    url = template.format(port=port)
    with pytest.raises(FetchError) as err:
        async with strict_cache.pin([item(url)], []):
            pass
    assert "refusing to fetch" in err.value.message
    assert "DOWNLOAD_ALLOW_NETWORKS" in err.value.message or "never allowed" in err.value.message
    assert "pw" not in err.value.message
    assert sum(file_server.gets.values()) == 0
    assert list(strict_cache.blobs.iterdir()) == []


@pytest.mark.parametrize(("url", "fragment"), BAD_SCHEMES)
async def test_other_schemes_refused(url: str, fragment: str, strict_cache: ModelCache) -> None:
    with pytest.raises(FetchError) as err:
        async with strict_cache.pin([item(url)], []):
            pass
    assert fragment in err.value.message


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:{port}/files/a.pt",
        "http://169.254.169.254/latest/meta-data/iam/",
        "http://[::1]:{port}/files/a.pt",
        "http://[fd00:ec2::254]/",
        "file:///etc/passwd",
    ],
)
async def test_redirects_to_internal_addresses_refused(
    target: str, file_server: FileServer, make_cache
) -> None:
    # only the file server's exact address is allowed; the redirect target is not
    cache: ModelCache = await make_cache(download_allow_networks=["127.0.0.1/32"], download_attempts=1)
    file_server.add("a.pt", b"x")
    port = file_server.base.rsplit(":", 1)[1]
    to = target.format(port=port)
    url = file_server.url("/redirect?to=" + quote(to, safe=""))
    with pytest.raises(FetchError) as err:
        async with cache.pin([item(url)], []):
            pass
    assert any(
        m in err.value.message for m in ("refusing to fetch", "is not allowed", "Invalid URL in a redirect")
    )
    assert file_server.gets["/redirect"] == 1
    assert file_server.gets["/files/a.pt"] == 0


async def test_allow_list_host_name_entry(file_server: FileServer, make_cache) -> None:
    file_server.add("a.pt", b"allowed")
    cache: ModelCache = await make_cache(download_allow_networks=["localhost"], download_attempts=1)
    port = file_server.base.rsplit(":", 1)[1]
    url = f"http://localhost:{port}/files/a.pt"
    async with cache.pin([item(url)], []) as resolved:
        assert (cache.models_root / "checkpoints" / resolved[item(url)]).read_bytes() == b"allowed"
