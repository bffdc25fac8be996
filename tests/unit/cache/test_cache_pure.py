"""Pure parts of the cache: naming, extension rules, settings, LRU planning, folders, manifest paths."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from comfyui_sidecar.cache.folders import known_folders
from comfyui_sidecar.cache.lru import Entry, LruIndex, NoSpaceError, footprint
from comfyui_sidecar.cache.manifest import ManifestError, target_of
from comfyui_sidecar.cache.naming import cache_name, link_name, url_hash
from comfyui_sidecar.cache.settings import CacheSettings, parse_quantity
from comfyui_sidecar.filenames import disposition_filename, infer_extension, path_extension, safe_basename

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
