"""comfyui_sidecar.model_paths: the one model-folder list and extra_model_paths.yaml for ComfyUI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from comfyui_sidecar.__main__ import main
from comfyui_sidecar.lifecycle import comfy_command
from comfyui_sidecar.model_paths import (
    MODEL_FOLDERS,
    extra_model_paths_yaml,
    known_folders,
    write_model_paths,
)
from comfyui_sidecar.settings import Settings


def test_known_folders_map_legacy_names_and_add_extras_once() -> None:
    assert known_folders(["clip", "ipadapter", "ipadapter"]) == (*MODEL_FOLDERS, "ipadapter")


def test_the_file_lists_the_model_root_first_then_the_cache_root() -> None:
    doc = yaml.safe_load(
        extra_model_paths_yaml(Path("/models"), Path("/cache/models"), ["checkpoints", "loras"])
    )
    assert doc == {
        "models": {
            "base_path": "/models",
            "is_default": True,
            "checkpoints": "checkpoints/",
            "loras": "loras/",
        },
        "cache_models": {
            "base_path": "/cache/models",
            "is_default": False,
            "checkpoints": "checkpoints/",
            "loras": "loras/",
        },
    }
    only_cache = yaml.safe_load(extra_model_paths_yaml(Path("/cache/models"), Path("/cache/models"), ["vae"]))
    assert list(only_cache) == ["cache_models"]


def test_written_from_the_settings_with_extra_folders_loaders_and_model_dir_folders(tmp_path: Path) -> None:
    (tmp_path / "models" / "instantid").mkdir(parents=True)
    settings = Settings(
        comfy_home=tmp_path,
        cache_dir=tmp_path / "cache",
        extra_model_folders=["ipadapter"],
        extra_model_loaders={"MyLoader": {"weights": "my_models"}},
    )
    path = write_model_paths(settings, settings.model_dir)
    assert path == tmp_path / "cache" / "extra_model_paths.yaml"
    doc = yaml.safe_load(path.read_text())
    assert doc["models"]["base_path"] == str(tmp_path / "models")
    assert doc["cache_models"]["base_path"] == str(tmp_path / "cache" / "models")
    for section in doc.values():
        assert {"checkpoints", "ipadapter", "my_models", "instantid"} <= set(section)
    assert [p.name for p in path.parent.iterdir()] == ["extra_model_paths.yaml"]  # no temp file left


def test_write_model_paths_command_writes_the_file_and_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "shared" / "paths.yaml"
    monkeypatch.setenv("COMFY_HOME", str(tmp_path))
    monkeypatch.setenv("EXTRA_MODEL_PATHS_FILE", str(target))
    monkeypatch.setenv("EXTRA_MODEL_FOLDERS", "ipadapter")
    assert main(["--write-model-paths"]) == 0
    assert "ipadapter" in yaml.safe_load(target.read_text())["cache_models"]
    assert str(target) in capsys.readouterr().out


def test_cmd_means_supervise_unless_the_mode_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDECAR_MODE", raising=False)
    assert Settings().sidecar_mode == "attach"
    monkeypatch.setenv("CMD", "python main.py")
    assert Settings().sidecar_mode == "supervise"
    monkeypatch.setenv("SIDECAR_MODE", "attach")
    assert Settings().sidecar_mode == "attach"


def test_the_supervised_command_gets_the_model_paths_file_once(tmp_path: Path) -> None:
    settings = Settings(cmd="python main.py --listen 127.0.0.1", cache_dir=tmp_path)
    paths_file = str(tmp_path / "extra_model_paths.yaml")
    argv = comfy_command(settings)
    assert argv == ["python", "main.py", "--listen", "127.0.0.1", "--extra-model-paths-config", paths_file]
    again = Settings(cmd=" ".join(argv), cache_dir=tmp_path)
    assert comfy_command(again) == argv


async def test_the_sidecar_writes_the_file_before_it_listens(tmp_path: Path) -> None:
    """In a pod ComfyUI starts once the sidecar's /health answers: the file must exist before listening."""
    from aiohttp import web
    from comfyui_sidecar.app import build_fetcher, create_app

    settings = Settings(comfy_home=tmp_path, cache_dir=tmp_path / "cache", extra_model_folders=["ipadapter"])
    runner = web.AppRunner(create_app(settings, fetcher=build_fetcher(settings), start_lifecycle=False))
    await runner.setup()  # the app's startup, before any socket is bound
    try:
        assert "ipadapter" in yaml.safe_load(settings.model_paths_file().read_text())["cache_models"]
    finally:
        await runner.cleanup()
