"""The library sync's pure parts: target rules, the report line (its 4096-byte budget), revisions of Hub
URLs. No network: the registry is built but never asked to fetch."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.cache.store import download_sources
from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.library.manifest import LibraryManifest, target_problem
from comfyui_sidecar.library.report import MAX_MESSAGE_BYTES, ModelReport, SyncReport, decode, encode
from comfyui_sidecar.library.store import LibraryStore
from comfyui_sidecar.library.sync import ModelFailed, Sync
from comfyui_sidecar.model_paths import known_folders

FOLDERS = known_folders(["my_nodes"])


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("checkpoints/a.safetensors", None),
        ("loras/sdxl/style v2.safetensors", None),
        ("my_nodes/x.bin", None),
        ("checkpoints", "must be <model folder>/<file name>"),
        ("/etc/passwd", "must be <model folder>/<file name>"),
        ("checkpoints/../../x", "unsafe path segment '..'"),
        ("checkpoints/.hidden", "unsafe path segment '.hidden'"),
        ("checkpoints/a\\b", "unsafe path segment"),
        ("checkpoints/a\nb", "unsafe path segment"),
        ("clip/x.safetensors", "legacy name: use 'text_encoders'"),
        ("nonsense/x.safetensors", "unknown model folder 'nonsense'"),
    ],
)
def test_targets(target: str, problem: str | None) -> None:
    found = target_problem(target, FOLDERS)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_the_report_fits_the_kubelets_4096_bytes_dropping_what_the_operator_knows_first() -> None:
    long = "Error downloading file: " + "x" * 400
    models = [ModelReport("Ready", 10**10, f"{i:064x}", downloaded=True) for i in range(150)]
    models += [ModelReport("Failed", 5, message=long, retryable=True) for _ in range(50)]
    report = SyncReport("0123456789abcdef", models, pruned=3)
    line = encode(report, pinned=range(100))
    assert len(line.encode()) <= MAX_MESSAGE_BYTES
    back = decode(line)
    assert back is not None
    assert len(back.models) == 200
    assert [m.phase for m in back.models] == [m.phase for m in models]
    assert back.models[150].retryable
    assert back.pruned == 3
    small = SyncReport("d", [ModelReport("Ready", 1, "a" * 64), ModelReport("Failed", 0, message=long)])
    assert decode(encode(small, pinned=[0])) == small  # nothing dropped when it fits


def test_decode_refuses_what_is_not_a_report() -> None:
    assert decode("Traceback (most recent call last): ...") is None
    assert decode('{"v": 2, "r": []}') is None
    assert decode("") is None


@pytest.fixture
async def sync(tmp_path: object) -> AsyncIterator[Sync]:
    settings = CacheSettings(hf_endpoint="https://hub.example")
    egress = Egress(settings)
    registry, s3, options = download_sources(settings, egress)
    yield Sync(LibraryManifest(), LibraryStore(tmp_path), registry, options, 10.0, lambda _: None)  # type: ignore[arg-type]
    await s3.close()
    await egress.close()


def test_a_revision_replaces_main_in_a_hub_url(sync: Sync) -> None:
    ref = sync.registry.reference("https://hub.example/org/repo/resolve/main/sub/m.safetensors")
    pinned = sync._at_revision(ref, "refs/pr/1")
    assert pinned.key == "https://hub.example/org/repo/resolve/refs%2Fpr%2F1/sub/m.safetensors"
    assert pinned.source == "hf"
    same = sync.registry.reference("https://hub.example/org/repo/resolve/v1/m.safetensors")
    assert sync._at_revision(same, "v1") is same
    with pytest.raises(ModelFailed, match="names revision 'v1' but revision is 'v2'"):
        sync._at_revision(same, "v2")
    with pytest.raises(ModelFailed, match="Hugging Face URLs only"):
        sync._at_revision(sync.registry.reference("s3://b/k.pt"), "v1")
