"""The model library's manifest: what `comfyui-sidecar sync` puts on the library volume. Pure.

The operator writes it (from a ComfyUIModelLibrary's spec) into a ConfigMap the sync Job mounts; the sync
reads it here. Each model has a URL (Hugging Face, HTTPS or S3: the sources registry's schemes), a target
`<folder>/<file>` (the folder one of ComfyUI's model folders, `comfyui_sidecar.model_paths`, or one of
`extra_folders`), and optionally the sha256 it must have and a Hugging Face revision.

The target rule lives here and nowhere else: the operator's API model calls `target_problem` too.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

from comfyui_sidecar.model_paths import LEGACY_FOLDERS, known_folders

SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_TARGET = 512
MAX_SEGMENT = 255
# One path segment: no separators, no control characters, not hidden (no leading dot, so never `.` or `..`).
_SEGMENT = re.compile(r"^[^./\\\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]*$")


class LibraryModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    target: str = Field(min_length=1)
    sha256: str | None = None
    revision: str | None = None


class LibraryManifest(BaseModel):
    """`models` in the order of the spec (results are reported by index); `prune` deletes files an earlier
    sync wrote that no model names any more; `extra_folders` are accepted besides ComfyUI's own."""

    model_config = ConfigDict(extra="forbid")

    models: list[LibraryModel] = Field(default_factory=list)
    prune: bool = False
    extra_folders: list[str] = Field(default_factory=list)

    def folders(self) -> tuple[str, ...]:
        return known_folders(self.extra_folders)

    def text(self) -> str:
        """The canonical JSON text (what the ConfigMap holds)."""
        return json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """16 hex digits of the sha256 of `text()` (names the sync Job, tags its report)."""
        return hashlib.sha256(self.text().encode()).hexdigest()[:16]


def target_path_problem(target: str) -> str | None:
    """Why `target` is not a safe relative path `<folder>/<file>[/...]`, or None. No absolute paths, no `.`,
    `..` or hidden segments, no backslashes or control characters."""
    if len(target) > MAX_TARGET:
        return f"target is longer than {MAX_TARGET} characters"
    parts = target.split("/")
    if target.startswith("/") or len(parts) < 2:
        return f"target {target!r} must be <model folder>/<file name>, e.g. checkpoints/model.safetensors"
    for part in parts:
        if not _SEGMENT.match(part) or len(part) > MAX_SEGMENT:
            return (
                f"target {target!r} has an unsafe path segment {part!r}: no '..', '.', hidden names, "
                "backslashes or control characters"
            )
    return None


def target_problem(target: str, folders: tuple[str, ...]) -> str | None:
    """Why `target` can not be written (unsafe path, or a folder ComfyUI does not know), or None."""
    problem = target_path_problem(target)
    if problem is not None:
        return problem
    folder = PurePosixPath(target).parts[0]
    if folder in LEGACY_FOLDERS:
        return f"folder {folder!r} is a legacy name: use {LEGACY_FOLDERS[folder]!r} instead"
    if folder not in folders:
        return (
            f"unknown model folder {folder!r}: not one of ComfyUI's model folders "
            f"({', '.join(folders)}); a custom node's folder goes into spec.extraModelFolders"
        )
    return None


def sha256_problem(value: str | None) -> str | None:
    if value is None or SHA256.match(value):
        return None
    return "sha256 must be 64 lower-case hex digits"
