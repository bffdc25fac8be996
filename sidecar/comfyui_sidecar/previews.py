"""ComfyUI's binary websocket frames that carry preview images (pure parsing).

A frame is a 4-byte big-endian event type and a payload: type 1 (PREVIEW_IMAGE) = 4-byte format (1 JPEG,
2 PNG) + image; type 4 (PREVIEW_IMAGE_WITH_METADATA, sent to clients that announced
`supports_preview_metadata`) = 4-byte metadata length + JSON {node_id, prompt_id, ...} + image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
"""The first frame the sidecar sends, so ComfyUI labels previews with their prompt and node."""
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class PreviewFrame:
    prompt_id: str | None
    node_id: str | None
    content_type: str
    data: bytes


def _sniff(image: bytes) -> str:
    return "image/png" if image.startswith(_PNG) else "image/jpeg"


def parse_preview(frame: bytes) -> PreviewFrame | None:
    """The preview in a binary frame, or None for other frames and malformed ones."""
    if len(frame) < 8:
        return None
    kind = int.from_bytes(frame[:4], "big")
    if kind == PREVIEW_IMAGE:
        image = frame[8:]
        fmt = int.from_bytes(frame[4:8], "big")
        return PreviewFrame(None, None, "image/png" if fmt == 2 else "image/jpeg", image) if image else None
    if kind != PREVIEW_IMAGE_WITH_METADATA:
        return None
    length = int.from_bytes(frame[4:8], "big")
    if 8 + length > len(frame):
        return None
    try:
        meta = json.loads(frame[8 : 8 + length])
    except ValueError:
        return None
    image = frame[8 + length :]
    if not isinstance(meta, dict) or not image:
        return None
    prompt_id, node_id, declared = meta.get("prompt_id"), meta.get("node_id"), meta.get("image_type")
    content_type = declared if isinstance(declared, str) and declared.startswith("image/") else _sniff(image)
    return PreviewFrame(
        str(prompt_id) if prompt_id is not None else None,
        str(node_id) if node_id is not None else None,
        content_type,
        image,
    )
