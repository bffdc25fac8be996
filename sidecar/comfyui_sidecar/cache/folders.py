"""ComfyUI's model folders, as the cache uses them; their one owner is `comfyui_sidecar.model_paths`."""

from __future__ import annotations

from comfyui_sidecar.model_paths import LEGACY_FOLDERS, MODEL_FOLDERS, canonical_folder, known_folders

__all__ = ["LEGACY_FOLDERS", "MODEL_FOLDERS", "canonical_folder", "known_folders"]
