"""Pure parts of the cache: naming, SSRF classification, credentials, settings, LRU planning, folders."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import socket
from pathlib import Path

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from comfyui_sidecar.cache.credentials import glob_regex, match_credential, request_auth, with_query
from comfyui_sidecar.cache.folders import known_folders
from comfyui_sidecar.cache.hf import HfFile, parse_hf_url
from comfyui_sidecar.cache.lru import Entry, LruIndex, NoSpaceError, footprint
from comfyui_sidecar.cache.manifest import ManifestError, target_of
from comfyui_sidecar.cache.naming import (
    cache_name,
    disposition_filename,
    infer_extension,
    link_name,
    path_extension,
    redact_url,
    safe_basename,
    strip_userinfo,
    url_hash,
)
from comfyui_sidecar.cache.settings import CacheSettings, parse_quantity
from comfyui_sidecar.cache.ssrf import (
    AddressGuard,
    AllowList,
    BlockedURLError,
    GuardedResolver,
    blocked_reason,
    parse_ip_literal,
)
from comfyui_sidecar.fetching import BasicAuth, BearerAuth, Credential, HeaderAuth, QueryAuth

# -- naming ----------------------------------------------------------------------------------------


def test_url_hash_matches_the_published_comfyui_api_example() -> None:
    url = "https://civitai.com/api/download/models/128713?type=Model&format=SafeTensor&size=pruned&fp=fp16"
    assert url_hash(url) == "Pk6VSKLStckZydwGhX0bM8TqaqHEW9yt"


@pytest.mark.parametrize("url", ["https://h/a.safetensors", "https://h/x?y=1#z", "https://h/ü/日本.png"])
def test_url_hash_is_the_formula(url: str) -> None:
    expected = base64.urlsafe_b64encode(hashlib.sha256(url.encode()).digest()).decode()[:32]
    assert url_hash(url) == expected
    assert cache_name(url, ".pt") == expected + ".pt"


@pytest.mark.parametrize(
    ("url", "ext"),
    [
        ("https://h/m/model.safetensors?x=1", ".safetensors"),
        ("https://h/m/model", ""),
        ("https://h/m.d/model", ""),
        ("https://h/a%20b.ckpt", ".ckpt"),
        ("https://h/.hidden", ""),
        ("https://h/x.tar.gz", ".gz"),
    ],
)
def test_path_extension(url: str, ext: str) -> None:
    assert path_extension(url) == ext


def test_extension_rules_in_order() -> None:
    cd = 'attachment; filename="w.ckpt"'
    assert (
        infer_extension("https://h/a.pt", content_disposition=cd, final_url=None, content_type=None) == ".pt"
    )
    assert infer_extension(
        "https://h/a", content_disposition=cd, final_url="https://c/x.bin", content_type=None
    ) == (".ckpt")
    assert infer_extension(
        "https://h/a", content_disposition=None, final_url="https://c/x.bin", content_type=""
    ) == (".bin")
    assert (
        infer_extension("https://h/a", content_disposition=None, final_url=None, content_type="image/png")
        == ".png"
    )
    assert (
        infer_extension("https://h/a", content_disposition=None, final_url=None, content_type="x/unknown")
        == ""
    )


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ("attachment; filename*=UTF-8''..%2F..%2Fx.pt", "x.pt"),
        ('attachment; filename="..\\\\..\\\\win.ini"', "win.ini"),
        ('attachment; filename=".bashrc"', "bashrc"),
        ('attachment; filename=".."', None),
        ("inline", None),
        (None, None),
    ],
)
def test_disposition_filename_is_a_safe_basename(header: str | None, name: str | None) -> None:
    assert disposition_filename(header) == name


def test_safe_basename_and_link_name() -> None:
    assert safe_basename("a/b/../c\x00d.pt") == "c_d.pt"
    assert safe_basename("...") == ""
    assert len(safe_basename("x" * 500 + ".safetensors")) == 200
    assert link_name("noext", "HASH.ckpt") == "noext.ckpt"
    assert link_name("../../evil.pt", "HASH.ckpt") == "evil.pt"
    assert link_name(None, "HASH.ckpt") == "HASH.ckpt"
    assert link_name("..", "HASH.ckpt") == "HASH.ckpt"


def test_urls_without_secrets() -> None:
    assert strip_userinfo("https://u:p@h:8/a?q=1") == "https://h:8/a?q=1"
    assert strip_userinfo("https://u:p@[::1]/a") == "https://[::1]/a"
    assert redact_url("https://u:p@h/a?token=abc") == "https://h/a?…"


# -- SSRF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "addr"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("example.com", None),
    ],
)
def test_parse_ip_literal_forms(host: str, addr: str | None) -> None:
    parsed = parse_ip_literal(host)
    assert (str(parsed) if parsed else None) == addr


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "169.254.1.1",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "100.64.1.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::",
        "fec0::1",
        "::ffff:0:7f00:1",
    ],
)
def test_internal_addresses_blocked(addr: str) -> None:
    assert blocked_reason(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize("addr", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "151.101.1.69"])
def test_public_addresses_allowed(addr: str) -> None:
    assert blocked_reason(ipaddress.ip_address(addr)) is None


def test_metadata_reason_and_allow_list() -> None:
    assert blocked_reason(ipaddress.ip_address("169.254.169.254")) == "a cloud metadata address"
    guard = AddressGuard(AllowList.parse(["10.0.0.0/8", "minio.local", "::1"]))
    guard.check_url("http://10.2.3.4/x")
    guard.check_url("http://minio.local/x")
    guard.check_url("http://[::1]/x")
    with pytest.raises(BlockedURLError):
        guard.check_url("http://192.168.0.1/x")
    with pytest.raises(BlockedURLError, match="scheme 'file'"):
        guard.check_url("file:///etc/passwd")
    with pytest.raises(BlockedURLError, match="no host"):
        guard.check_url("http:///x")


class _FakeResolver(AbstractResolver):
    def __init__(self, answer: str) -> None:
        self.answer = answer

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=self.answer, port=port, family=family, proto=0, flags=0)]

    async def close(self) -> None:
        return None


def test_guarded_resolver_checks_resolved_addresses() -> None:
    guard = AddressGuard(AllowList())
    bad = GuardedResolver(guard, _FakeResolver("10.0.0.7"))
    with pytest.raises(BlockedURLError, match=r"10\.0\.0\.7, a private address"):
        asyncio.run(bad.resolve("rebind.example", 80))
    good = GuardedResolver(guard, _FakeResolver("93.184.216.34"))
    assert asyncio.run(good.resolve("example.com", 80))[0]["host"] == "93.184.216.34"
    allowed = GuardedResolver(AddressGuard(AllowList.parse(["minio.local"])), _FakeResolver("10.0.0.7"))
    assert asyncio.run(allowed.resolve("minio.local", 80))[0]["host"] == "10.0.0.7"


# -- credentials -----------------------------------------------------------------------------------


def test_glob_semantics() -> None:
    assert glob_regex("https://h/**").match("https://h/a/b/c?x=1")
    assert glob_regex("https://h/*").match("https://h/a?x=1")
    assert not glob_regex("https://h/*").match("https://h/a/b")
    assert glob_regex("https://h/?.pt").match("https://h/a.pt")
    assert not glob_regex("https://h/a.pt").match("https://h/aXpt")
    assert not glob_regex("https://h/a").match("https://h/a/extra")


def test_first_matching_credential_wins() -> None:
    creds = [
        Credential(url_pattern="https://other/**", auth=BearerAuth(type="bearer", token="x")),
        Credential(url_pattern="https://h/**", auth=BearerAuth(type="bearer", token="first")),
        Credential(url_pattern="**", auth=BearerAuth(type="bearer", token="second")),
    ]
    auth = match_credential("https://h/m.pt", creds)
    assert isinstance(auth, BearerAuth)
    assert auth.token == "first"
    assert match_credential("https://nomatch/", creds[:2]) is None


def test_request_auth_kinds_and_precedence() -> None:
    url = "https://h/a.pt"
    assert request_auth(BearerAuth(type="bearer", token="t"), url=url).headers == {
        "Authorization": "Bearer t"
    }
    basic = request_auth(BasicAuth(type="basic", username="u", password="p"), url=url).headers[
        "Authorization"
    ]
    assert base64.b64decode(basic.split()[1]) == b"u:p"
    assert request_auth(HeaderAuth(type="header", header_name="X-K", header_value="v"), url=url).headers == {
        "X-K": "v"
    }
    q = request_auth(QueryAuth(type="query", query_param="token", query_value="v"), url=url)
    assert with_query("https://h/a.pt?x=1&token=old", q.query) == "https://h/a.pt?x=1&token=v"
    from_url = request_auth(None, url="https://me:pw@h/a", global_header=("X-G", "g"))
    assert base64.b64decode(from_url.headers["Authorization"].split()[1]) == b"me:pw"
    assert request_auth(None, url=url, global_header=("X-G", "g")).headers == {"X-G": "g"}
    assert request_auth(None, url=url).empty


# -- settings --------------------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CACHE_SIZE_LIMIT_BYTES", "10Gi")
    monkeypatch.setenv("CACHE_HEADROOM_FRACTION", "0.2")
    monkeypatch.setenv("DOWNLOAD_ALLOW_NETWORKS", "10.0.0.0/8, minio.local")
    monkeypatch.setenv("EXTRA_MODEL_FOLDERS", "ipadapter,instantid")
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    s = CacheSettings()
    assert s.cache_dir == tmp_path
    assert s.cache_budget_bytes() == int(10 * 1024**3 * 0.8)
    assert s.download_allow_networks == ["10.0.0.0/8", "minio.local"]
    assert s.extra_model_folders == ["ipadapter", "instantid"]
    assert s.hf_token_value() == "hf_abc"
    assert "hf_abc" not in repr(s)
    monkeypatch.setenv("LRU_CACHE_SIZE_GB", "1.5")
    assert CacheSettings().cache_budget_bytes() == int(1.5 * 1024**3)  # the smaller budget wins


def test_hf_token_from_mounted_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("hf_from_file\n")
    assert CacheSettings(hf_token_path=token_file).hf_token_value() == "hf_from_file"
    assert CacheSettings().cache_budget_bytes() is None


@pytest.mark.parametrize(("text", "value"), [("100Gi", 100 * 1024**3), ("500M", 500 * 10**6), ("1024", 1024)])
def test_parse_quantity(text: str, value: int) -> None:
    assert parse_quantity(text) == value


def test_bad_quantity_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a byte quantity"):
        parse_quantity("lots")


# -- LRU -------------------------------------------------------------------------------------------


def entry(name: str, size: int, pins: int = 0) -> Entry:
    return Entry(
        name=name, url=f"https://h/{name}", size=size, sha256="", auth_required=False, cached_at="", pins=pins
    )


def test_lru_plans_eviction_in_last_use_order_skipping_pinned() -> None:
    idx = LruIndex(budget=4 * footprint(1000))
    for name in ("a", "b", "c", "d"):
        idx.add(entry(name, 1000))
    idx.pin("a")
    idx.touch("b")  # order now: c, d, a(pinned), b
    res = idx.open_reservation()
    victims = idx.plan_growth(res, 1500)
    assert [v.name for v in victims] == ["c"]
    idx.evict(victims)
    idx.grow(res, 1500)
    assert idx.used() <= idx.budget  # type: ignore[operator]


def test_lru_refuses_too_large_and_reports_pinned() -> None:
    idx = LruIndex(budget=2 * footprint(1000))
    res = idx.open_reservation()
    with pytest.raises(NoSpaceError) as err:
        idx.plan_growth(res, 100_000)
    assert err.value.permanent
    idx.add(entry("a", 1000, pins=1))
    idx.add(entry("b", 1000, pins=1))
    with pytest.raises(NoSpaceError) as err:
        idx.plan_growth(res, 1000)
    assert not err.value.permanent
    assert "pinned by running prompts" in err.value.message


def test_reservations_count_against_the_budget() -> None:
    idx = LruIndex(budget=3 * footprint(1000))
    r1, r2 = idx.open_reservation(), idx.open_reservation()
    idx.grow(r1, 1000)
    idx.grow(r2, 1000)
    idx.add(entry("old", 1000))
    r3 = idx.open_reservation()
    assert [v.name for v in idx.plan_growth(r3, 1000)] == ["old"]
    idx.release(r1)
    assert idx.used() == 2 * footprint(1000)


# -- folders, manifest, Hugging Face URLs ----------------------------------------------------------


def test_known_folders_add_extras_once() -> None:
    assert known_folders(["clip", "ipadapter", "ipadapter"])[-1] == "ipadapter"
    assert "text_encoders" in known_folders()
    assert "clip" not in known_folders(["clip"])


def test_manifest_local_path() -> None:
    assert target_of("/opt/ComfyUI/models/loras/x.safetensors") == ("loras", "x.safetensors")
    with pytest.raises(ManifestError):
        target_of("x.safetensors")
    with pytest.raises(ManifestError):
        target_of("loras/../../x.pt")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://huggingface.co/org/repo/resolve/main/sub/model.safetensors",
            HfFile("org/repo", "model", "main", "sub/model.safetensors"),
        ),
        (
            "https://huggingface.co/datasets/org/ds/resolve/v1.0/data.bin?download=true",
            HfFile("org/ds", "dataset", "v1.0", "data.bin"),
        ),
        ("https://huggingface.co/gpt2/resolve/main/model.bin", HfFile("gpt2", "model", "main", "model.bin")),
        (
            "https://huggingface.co/org/repo/resolve/refs%2Fpr%2F1/a.pt",
            HfFile("org/repo", "model", "refs/pr/1", "a.pt"),
        ),
        ("https://huggingface.co/org/repo/blob/main/a.pt", None),
        ("https://huggingface.co/org/repo/resolve/main/../a.pt", None),
        ("https://example.com/org/repo/resolve/main/a.pt", None),
    ],
)
def test_parse_hf_url(url: str, expected: HfFile | None) -> None:
    assert parse_hf_url(url, "https://huggingface.co") == expected


def test_guard_refuses_a_malformed_url_clearly() -> None:
    from comfyui_sidecar.cache.ssrf import AddressGuard, AllowList, BlockedURLError

    guard = AddressGuard(AllowList())
    for url in ("http://[::1/x", "http://[fe80::1%eth0/x"):
        with pytest.raises(BlockedURLError, match="invalid URL"):
            guard.check_url(url)
