"""Model folders as ComfyUI's folder_paths knows them, incl. --extra-model-paths-config YAML files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
LEGACY_NAMES = {"unet": "diffusion_models", "clip": "text_encoders"}

# folder key -> default subdirectories of <base>/models (ComfyUI 0.3.64 folder_paths.py)
DEFAULT_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "configs": ("configs",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("unet", "diffusion_models"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "diffusers": ("diffusers",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "classifiers": ("classifiers",),
    "model_patches": ("model_patches",),
    "audio_encoders": ("audio_encoders",),
}
# main.py also adds <output>/<x> for these folders.
OUTPUT_MODEL_FOLDERS = ("checkpoints", "clip", "vae", "diffusion_models", "loras")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


class ExtraPathsError(ValueError):
    """An --extra-model-paths-config file that cannot be used."""


@dataclass
class Folder:
    paths: list[Path]
    extensions: frozenset[str] | None  # None: any file


@dataclass
class ModelFolders:
    """Folder key -> search paths, in priority order. Mutable only while being built."""

    folders: dict[str, Folder] = field(default_factory=dict)

    @classmethod
    def standard(cls, base_dir: Path, models_dir: Path, output_dir: Path) -> ModelFolders:
        result = cls()
        for key, subdirs in DEFAULT_FOLDERS.items():
            exts: frozenset[str] | None = MODEL_EXTENSIONS
            if key == "configs":
                exts = frozenset({".yaml"})
            elif key in ("classifiers", "diffusers"):
                exts = None
            result.folders[key] = Folder([models_dir / s for s in subdirs], exts)
        result.folders["custom_nodes"] = Folder([base_dir / "custom_nodes"], None)
        for name in OUTPUT_MODEL_FOLDERS:
            result.add(name, output_dir / name)
        return result

    def add(self, name: str, path: Path, is_default: bool = False) -> None:
        key = LEGACY_NAMES.get(name, name)
        folder = self.folders.setdefault(key, Folder([], None))
        if path in folder.paths:
            if is_default:
                folder.paths.remove(path)
                folder.paths.insert(0, path)
            return
        if is_default:
            folder.paths.insert(0, path)
        else:
            folder.paths.append(path)

    def load_extra_config(self, yaml_path: Path) -> None:
        try:
            config = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
        except OSError as ex:
            raise ExtraPathsError(f"cannot read extra model paths config {yaml_path}: {ex.strerror}") from ex
        except yaml.YAMLError as ex:
            raise ExtraPathsError(f"extra model paths config {yaml_path} is not valid YAML: {ex}") from ex
        for path_name, folder_name, is_default in parse_extra_config(config, yaml_path.parent.resolve()):
            self.add(folder_name, path_name, is_default)

    def keys(self) -> list[str]:
        return list(self.folders)

    def list_files(self, key: str) -> list[str]:
        """Sorted relative names ("sub/x.safetensors") of the files under every path of a folder."""
        folder = self.folders[key]
        names: set[str] = set()
        for root in folder.paths:
            names.update(_walk(root, folder.extensions))
        return sorted(names)

    def full_path(self, key: str, name: str) -> Path | None:
        """The first existing file called `name` in the folder's paths (symlinks followed), else None."""
        folder = self.folders.get(LEGACY_NAMES.get(key, key))
        if folder is None or not is_safe_relative(name):
            return None
        for root in folder.paths:
            candidate = root / name
            if candidate.is_file():
                return candidate
        return None


def parse_extra_config(config: Any, yaml_dir: Path) -> list[tuple[Path, str, bool]]:
    """(path, folder name, is_default) entries of an extra_model_paths YAML document, in file order."""
    if config is None:
        return []
    if not isinstance(config, Mapping):
        raise ExtraPathsError("extra model paths config must be a mapping of sections")
    entries: list[tuple[Path, str, bool]] = []
    for section_name, section in config.items():
        if section is None:
            continue
        if not isinstance(section, Mapping):
            raise ExtraPathsError(f"section {section_name!r} must be a mapping")
        base_path: Path | None = None
        if section.get("base_path") is not None:
            base_path = Path(os.path.expandvars(os.path.expanduser(str(section["base_path"]))))
            if not base_path.is_absolute():
                base_path = yaml_dir / base_path
        is_default = bool(section.get("is_default", False))
        for folder_name, value in section.items():
            if folder_name in ("base_path", "is_default"):
                continue
            for raw_line in str(value).split("\n"):
                line = raw_line.strip()
                if not line:
                    continue
                path = Path(line)
                if base_path is not None:
                    path = base_path / path
                elif not path.is_absolute():
                    path = yaml_dir / path
                entries.append((Path(os.path.normpath(path)), str(folder_name), is_default))
    return entries


def is_safe_relative(name: str) -> bool:
    """True when `name` is a relative path that stays inside its directory."""
    if not name or name.startswith(("/", "\\")) or "\x00" in name:
        return False
    parts = name.replace("\\", "/").split("/")
    return ".." not in parts


def confined(root: Path, subfolder: str) -> Path | None:
    """`root/subfolder` resolved (symlinks followed), or None when that leaves `root`."""
    if "\x00" in subfolder:
        return None
    base = root.resolve()
    target = (base / os.path.normpath(subfolder)).resolve() if subfolder else base
    if os.path.commonpath((str(base), str(target))) != str(base):
        return None
    return target


def _walk(root: Path, extensions: frozenset[str] | None, max_files: int = 100_000) -> list[str]:
    if not root.is_dir():
        return []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        for filename in filenames:
            if extensions is not None and os.path.splitext(filename)[1].lower() not in extensions:
                continue
            if not os.path.isfile(os.path.join(dirpath, filename)):
                continue
            found.append(filename if rel == "." else f"{rel.replace(os.sep, '/')}/{filename}")
            if len(found) >= max_files:
                return found
    return found


def list_input_images(input_dir: Path) -> list[str]:
    """Top-level image files of the input directory (what LoadImage offers), sorted."""
    if not input_dir.is_dir():
        return []
    return sorted(p.name for p in input_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
