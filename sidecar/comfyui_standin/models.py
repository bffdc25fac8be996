"""Opening model files: a .safetensors header is checked like the real loader does; a handle is kept."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

MAX_HEADER_SIZE = 100_000_000
HEADER_ERROR = "Error while deserializing header: {}"


class SafetensorError(Exception):
    """Raised for a corrupt .safetensors file; reported with the real library's exception type name."""

    comfy_type = "safetensors._safetensors_rust.SafetensorError"


@dataclass(frozen=True)
class ModelHandle:
    """A "loaded" model: where it came from and what its header said."""

    folder: str
    name: str
    path: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)
    loras: tuple[tuple[str, float], ...] = ()

    @property
    def scale(self) -> int:
        """Upscale factor: `scale` in the safetensors metadata, else `x<N>` in the name, else 2 (1..8)."""
        raw = self.metadata.get("scale")
        if raw is None:
            match = re.search(r"x(\d)", Path(self.name).stem, re.IGNORECASE)
            raw = match.group(1) if match else "2"
        try:
            return max(1, min(8, int(raw)))
        except ValueError:
            return 2


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """Validate the header of a .safetensors file and return its `__metadata__` map."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SafetensorError(HEADER_ERROR.format("header too small"))
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_SIZE:
            raise SafetensorError(HEADER_ERROR.format("header too large"))
        if length + 8 > size:
            raise SafetensorError(HEADER_ERROR.format("invalid header length"))
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as ex:
        raise SafetensorError(HEADER_ERROR.format(f"invalid header deserialization: {ex}")) from ex
    if not isinstance(header, dict):
        raise SafetensorError(HEADER_ERROR.format("header is not a JSON object"))
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise SafetensorError(HEADER_ERROR.format("__metadata__ is not a JSON object"))
    return {str(k): str(v) for k, v in metadata.items()}


def load_model(folder: str, name: str, path: Path) -> ModelHandle:
    """Open a model file (following symlinks). Other formats are only opened and sized, never unpickled."""
    resolved = path.resolve()
    metadata: dict[str, str] = {}
    if resolved.suffix.lower() in (".safetensors", ".sft"):
        metadata = read_safetensors_metadata(resolved)
    else:
        with resolved.open("rb") as handle:
            handle.read(1)
    return ModelHandle(folder, name, str(resolved), resolved.stat().st_size, metadata)


def safetensors_bytes(metadata: dict[str, str] | None = None) -> bytes:
    """A minimal valid .safetensors file (no tensors), for tests and quick starts."""
    header = json.dumps({"__metadata__": metadata or {}}).encode()
    return len(header).to_bytes(8, "little") + header
