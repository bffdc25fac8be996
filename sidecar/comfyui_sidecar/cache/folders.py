"""ComfyUI's model folders (comfyui-server-api.md section 5) and the extra_model_paths.yaml text. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

# Folder names registered by ComfyUI (0.3.64, plus the ones newer releases add).
MODEL_FOLDERS: tuple[str, ...] = (
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "vae_approx",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "controlnet",
    "gligen",
    "upscale_models",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
    "latent_upscale_models",
)

# Legacy folder names ComfyUI maps onto the current ones.
LEGACY_FOLDERS: dict[str, str] = {
    "unet": "diffusion_models",
    "clip": "text_encoders",
    "t2i_adapter": "controlnet",
}


def canonical_folder(folder: str) -> str:
    return LEGACY_FOLDERS.get(folder, folder)


def known_folders(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Every folder name the cache links into: ComfyUI's plus configured extras, in a stable order."""
    names = list(MODEL_FOLDERS)
    for name in extra:
        folder = canonical_folder(name)
        if folder not in names:
            names.append(folder)
    return tuple(names)


def extra_model_paths_yaml(models_root: Path, folders: Iterable[str]) -> str:
    """ComfyUI `extra_model_paths.yaml` text that adds `<models_root>/<folder>` for every folder."""
    section: dict[str, object] = {"base_path": str(models_root), "is_default": False}
    for folder in folders:
        section[folder] = f"{folder}/"
    return yaml.safe_dump({"comfyui_sidecar_cache": section}, sort_keys=False)
