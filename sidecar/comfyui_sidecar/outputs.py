"""Output files: which files a finished prompt produced, in which order (pure)."""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

OUTPUT_TYPES = ("output", "temp")


@dataclass(frozen=True)
class OutputFile:
    """One output file, ready to deliver."""

    filename: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class OutputRef:
    """Where ComfyUI put one output file (an item of `outputs[node][kind]` in history / `executed`)."""

    node_id: str
    filename: str
    subfolder: str
    type: str
    comfyui: int = 0
    """The local ComfyUI that wrote it (its temp directory is its own)."""


def content_type_for(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


def output_refs(outputs: Mapping[str, Any], node_order: Sequence[str], comfyui: int = 0) -> list[OutputRef]:
    """The files of a ComfyUI `outputs` map (of local ComfyUI `comfyui`), in prompt node order, then item
    order; only output/temp files."""
    position = {node_id: index for index, node_id in enumerate(node_order)}
    refs: list[OutputRef] = []
    for node_id in sorted(outputs, key=lambda n: (position.get(n, len(position)), n)):
        node_out = outputs[node_id]
        if not isinstance(node_out, Mapping):
            continue
        for items in node_out.values():
            if not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, Mapping) or not isinstance(item.get("filename"), str):
                    continue
                kind = item.get("type", "output")
                if kind not in OUTPUT_TYPES:
                    continue
                subfolder = str(item.get("subfolder") or "")
                refs.append(OutputRef(node_id, item["filename"], subfolder, str(kind), comfyui))
    return refs


def is_safe_relative(path: str) -> bool:
    """True when `path` is a relative path that stays inside its directory."""
    if not path:
        return True
    if "\\" in path or "\x00" in path:
        return False
    pure = PurePosixPath(path)
    return not pure.is_absolute() and ".." not in pure.parts
