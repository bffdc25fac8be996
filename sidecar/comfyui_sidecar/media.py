"""Recognise a media file's type from its first bytes (for inline base64 inputs)."""

from __future__ import annotations

_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpg"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"BM", "bmp"),
    (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"),
    (0, b"\x00\x00\x01\x00", "ico"),
    (0, b"\x1aE\xdf\xa3", "webm"),
    (0, b"FLV", "flv"),
    (0, b"0&\xb2u\x8ef\xcf\x11", "wmv"),
    (0, b"ID3", "mp3"),
    (0, b"\xff\xfb", "mp3"),
    (0, b"\xff\xf3", "mp3"),
    (0, b"\xff\xf2", "mp3"),
    (0, b"OggS", "ogg"),
    (0, b"fLaC", "flac"),
    (0, b"%PDF", "pdf"),
)

_RIFF = {b"WEBP": "webp", b"WAVE": "wav", b"AVI ": "avi"}
_FTYP = {b"M4A ": "m4a", b"qt  ": "mov", b"3gp4": "3gp", b"3gp5": "3gp", b"M4V ": "m4v"}

_MIME_EXT = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
    "video/x-msvideo": "avi",
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/ogg": "ogg",
    "audio/flac": "flac",
    "audio/mp4": "m4a",
}


def sniff_extension(data: bytes) -> str | None:
    """File extension (without dot) for the bytes, or None when the type is not recognised."""
    if data[:4] == b"RIFF" and data[8:12] in _RIFF:
        return _RIFF[data[8:12]]
    if data[4:8] == b"ftyp":
        return _FTYP.get(data[8:12], "mp4")
    for offset, magic, ext in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return ext
    return None


def extension_for_mime(mime: str) -> str | None:
    return _MIME_EXT.get(mime.strip().lower())
