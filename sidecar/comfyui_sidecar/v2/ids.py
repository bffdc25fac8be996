"""Job, asset and output ids that name the peer that owns them, and list cursors (pure).

An id is `<prefix>_<base32(payload + tag)>`: payload = version, kind, creation time (ms), a random nonce, the
owner peer's name (and, for an output, its index); tag = HMAC-SHA256(ID_KEY, prefix + payload)[:8]. So any
peer can tell from an id alone who holds the job, when it was made (to report a job whose owner is gone as
`expired` rather than 404) and that the id was minted by this instance (a changed or made-up id reads as
404). The owner's name is only looked up among the current peers; it is never used as an address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass
from typing import Literal

Kind = Literal["job", "asset", "output"]
_PREFIX: dict[Kind, str] = {"job": "job", "asset": "ast", "output": "out"}
_KIND_BYTE: dict[Kind, int] = {"job": 1, "asset": 2, "output": 3}
_VERSION = 1
_TAG = 8
_NONCE = 10
_HEAD = struct.Struct(">BB6s10sB")  # version, kind, created ms (48 bit), nonce, owner length
MAX_ID_LENGTH = 200


@dataclass(frozen=True)
class ParsedId:
    kind: Kind
    owner: str
    created_ms: int
    nonce: bytes
    index: int | None = None

    def job(self) -> ParsedId:
        """The job an output id belongs to (itself for a job id)."""
        return ParsedId("job", self.owner, self.created_ms, self.nonce)


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes | None:
    """The bytes of canonical lower-case unpadded base32 (one spelling per value), else None."""
    if not text or not text.isalnum():
        return None
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        return None
    return raw if _b32(raw) == text else None


def _tag(key: bytes, prefix: str, payload: bytes) -> bytes:
    return hmac.new(key, prefix.encode() + payload, hashlib.sha256).digest()[:_TAG]


def mint(key: bytes, kind: Kind, owner: str, created_ms: int, *, nonce: bytes | None = None) -> str:
    """A new id of `kind` owned by `owner` (a peer name of at most 64 UTF-8 bytes)."""
    return encode(key, ParsedId(kind, owner, created_ms, nonce or os.urandom(_NONCE)))


def encode(key: bytes, parsed: ParsedId) -> str:
    owner = parsed.owner.encode()
    if not 0 < len(owner) <= 64 or len(parsed.nonce) != _NONCE:
        raise ValueError("owner must be 1-64 bytes and the nonce 10 bytes")
    payload = _HEAD.pack(
        _VERSION, _KIND_BYTE[parsed.kind], parsed.created_ms.to_bytes(6, "big"), parsed.nonce, len(owner)
    )
    payload += owner
    if parsed.kind == "output":
        payload += struct.pack(">H", parsed.index or 0)
    prefix = _PREFIX[parsed.kind]
    return f"{prefix}_{_b32(payload + _tag(key, prefix, payload))}"


def output_id(key: bytes, job: ParsedId, index: int) -> str:
    return encode(key, ParsedId("output", job.owner, job.created_ms, job.nonce, index))


def decode(key: bytes, text: str, *, kinds: tuple[Kind, ...] = ("job", "asset", "output")) -> ParsedId | None:
    """The parts of an id minted by this instance, or None (malformed, other kind, or a bad tag)."""
    if len(text) > MAX_ID_LENGTH:
        return None
    prefix, sep, body = text.partition("_")
    kind = next((k for k, p in _PREFIX.items() if p == prefix), None)
    raw = _unb32(body) if sep else None
    if kind is None or kind not in kinds or raw is None or len(raw) < _HEAD.size + _TAG:
        return None
    payload, tag = raw[:-_TAG], raw[-_TAG:]
    if not hmac.compare_digest(tag, _tag(key, prefix, payload)):
        return None
    version, kind_byte, created, nonce, owner_len = _HEAD.unpack_from(payload)
    rest = payload[_HEAD.size :]
    extra = 2 if kind == "output" else 0
    if version != _VERSION or kind_byte != _KIND_BYTE[kind] or len(rest) != owner_len + extra:
        return None
    try:
        owner = rest[:owner_len].decode()
    except UnicodeDecodeError:
        return None
    index = struct.unpack(">H", rest[owner_len:])[0] if kind == "output" else None
    return ParsedId(kind, owner, int.from_bytes(created, "big"), nonce, index)


# ---- list cursors ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    """Position in the newest-first job list: items strictly after (created_ms, job_id)."""

    created_ms: int
    job_id: str


def encode_cursor(key: bytes, cursor: Cursor) -> str:
    payload = json.dumps([cursor.created_ms, cursor.job_id], separators=(",", ":")).encode()
    return _b32(payload + _tag(key, "cursor", payload))


def decode_cursor(key: bytes, text: str) -> Cursor | None:
    raw = _unb32(text) if len(text) <= 2 * MAX_ID_LENGTH else None
    if raw is None or len(raw) <= _TAG:
        return None
    payload, tag = raw[:-_TAG], raw[-_TAG:]
    if not hmac.compare_digest(tag, _tag(key, "cursor", payload)):
        return None
    try:
        created_ms, job_id = json.loads(payload)
    except (ValueError, TypeError):
        return None
    if not isinstance(created_ms, int) or not isinstance(job_id, str):
        return None
    return Cursor(created_ms, job_id)
