"""Prompt rewriting (contract 3.1), a pure function of (prompt, request id, options).

It returns the rewritten prompt plus what the request handler must do before queueing it: URLs to fetch
(`Fetch`, done by the cache), inline files to write (decoded base64 / data: URIs) and local input names
to check.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfyui_sidecar.egress.urls import InvalidUrl, Url, parse_url, scheme_of
from comfyui_sidecar.fetching import Fetch
from comfyui_sidecar.jsonbody import b64decode_text
from comfyui_sidecar.loaders import LoaderTable
from comfyui_sidecar.media import extension_for_mime, sniff_extension
from comfyui_sidecar.outputs import is_safe_relative
from comfyui_sidecar.sources.registry import SCHEMES, supported_schemes

NO_OUTPUT_MESSAGE = 'Prompt must contain a node with a "filename_prefix" input, such as "SaveImage"'
DIRECTORY_CLASSES = frozenset({"VHS_LoadImages", "VHS_LoadImagesPath"})
VIDEO_CLASSES = frozenset(
    {"LoadVideo", "VHS_LoadVideo", "VHS_LoadVideoPath", "VHS_LoadVideoFFmpegPath", "VHS_LoadVideoFFmpeg"}
)
_DATA_URI = re.compile(r"data:([^;,]*)((?:;[^;,]*)*?);base64,(.*)", re.DOTALL | re.IGNORECASE)
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
_ANNOTATION = re.compile(r".* \[(input|output|temp)\]")
_WHITESPACE = re.compile(r"\s+")
MAX_NAME_LENGTH = 4096
"""Longer values are never taken for file names (upstream's rule too): they are base64."""
_HEAD_CHARS = 64


class RewriteError(Exception):
    """A request the sidecar refuses (400 {error, location})."""

    def __init__(self, message: str, location: str) -> None:
        super().__init__(message)
        self.message = message
        self.location = location


@dataclass(frozen=True)
class RewriteOptions:
    prepend_filenames: bool
    loaders: LoaderTable


@dataclass(frozen=True)
class InlineFile:
    """A file to write into the input directory before queueing: `<input dir>/<relpath>`.

    `encoded` is the base64 text, decoded only when the file is written (in slices, off the event loop's
    critical path: `jsonbody.b64decode_sliced`); its first bytes were decoded here to learn the file type.
    """

    relpath: str
    encoded: str
    location: str
    message_prefix: str

    def decode(self) -> bytes:
        """The file's bytes at once (small files, tests); RewriteError for invalid base64."""
        try:
            return b64decode_text(self.encoded)
        except ValueError:
            raise invalid_base64(self.message_prefix, self.location) from None


@dataclass(frozen=True)
class LocalInput:
    """A file name that must already exist inside the input directory."""

    relpath: str
    location: str
    message_prefix: str


@dataclass
class Rewritten:
    prompt: dict[str, Any]
    output_nodes: list[str] = field(default_factory=list)
    fetches: list[Fetch] = field(default_factory=list)
    inline_files: list[InlineFile] = field(default_factory=list)
    local_inputs: list[LocalInput] = field(default_factory=list)
    directories: dict[str, str] = field(default_factory=dict)
    """node id -> folder (relative to the input dir) that replaces its `directory` list after fetching."""


def safe_token(request_id: str) -> str:
    """A file-name-safe token for the request id (the id itself when it already is one)."""
    if _SAFE_TOKEN.fullmatch(request_id) and ".." not in request_id:
        return request_id
    return "req-" + hashlib.sha256(request_id.encode()).hexdigest()[:16]


def source_url(value: str, prefix: str, location: str) -> Url | None:
    """The parsed URL when `value` is written as a URL of a scheme some source serves (the registry's
    list), None when it is not; RewriteError when it is one but not a valid one (a port past 65535, a host
    label over 63 characters, an unpaired surrogate...). The URL is parsed here, once."""
    if scheme_of(value) not in SCHEMES:
        return None
    try:
        return parse_url(value)
    except InvalidUrl as error:
        raise RewriteError(f"{prefix}: {error.message}", location) from None


def rewrite_prompt(prompt: Mapping[str, Any], request_id: str, options: RewriteOptions) -> Rewritten:
    """Rewrite output prefixes and media/model inputs; raise RewriteError for a request that cannot run."""
    out = Rewritten(prompt=_copy_nodes(prompt))
    token = safe_token(request_id)
    for node_id, node in out.prompt.items():
        inputs = node["inputs"]
        class_type = node["class_type"]
        prefix = inputs.get("filename_prefix")
        if isinstance(prefix, str) and prefix:
            inputs["filename_prefix"] = f"{request_id}_{prefix}" if options.prepend_filenames else request_id
            if "save_output" not in inputs or inputs["save_output"]:
                out.output_nodes.append(node_id)
        elif isinstance(inputs.get("image"), str):
            _media(out, node_id, "image", "image", token)
        elif class_type in DIRECTORY_CLASSES and isinstance(inputs.get("directory"), list):
            _directory(out, node_id, token)
        elif class_type in VIDEO_CLASSES:
            for name in ("video", "file"):
                if isinstance(inputs.get(name), str) and inputs[name]:
                    _media(out, node_id, name, "video", token)
        elif class_type == "LoadAudio" and isinstance(inputs.get("audio"), str):
            _media(out, node_id, "audio", "audio", token)
        elif class_type in options.loaders:
            _models(out, node_id, options.loaders[class_type])
    if not out.output_nodes:
        raise RewriteError(NO_OUTPUT_MESSAGE, "prompt")
    return out


def _copy_nodes(prompt: Mapping[str, Any]) -> dict[str, Any]:
    """Copies of the node and inputs dicts (all that rewriting changes; lists are copied where changed)."""
    return {node_id: {**node, "inputs": dict(node["inputs"])} for node_id, node in prompt.items()}


def finish_directories(prompt: Mapping[str, Any], directories: Mapping[str, str]) -> dict[str, Any]:
    """Replace each image-directory list by its folder (after fetched values were applied)."""
    result = dict(prompt)
    for node_id, folder in directories.items():
        node = dict(result[node_id])
        node["inputs"] = {**node["inputs"], "directory": folder}
        result[node_id] = node
    return result


def _models(out: Rewritten, node_id: str, inputs_to_folders: Mapping[str, str]) -> None:
    inputs = out.prompt[node_id]["inputs"]
    prefix = f"Failed to process model for node {node_id}"
    location = f"prompt.{node_id}.inputs"
    for input_name, folder in inputs_to_folders.items():
        value = inputs.get(input_name)
        if not isinstance(value, str):
            continue
        scheme = scheme_of(value)
        if scheme is not None and scheme not in SCHEMES:
            raise RewriteError(
                f"{prefix}: unsupported URL scheme {scheme!r} in {input_name} "
                f"(supported schemes: {supported_schemes()})",
                location,
            )
        url = source_url(value, prefix, location)
        if url is not None:
            out.fetches.append(Fetch(value, node_id, input_name, "model", folder, ref=url))


def _directory(out: Rewritten, node_id: str, token: str) -> None:
    inputs = out.prompt[node_id]["inputs"]
    location = f"prompt.{node_id}.inputs.directory"
    prefix = f"Failed to download images for node {node_id}"
    values: list[Any] = list(inputs["directory"])
    inputs["directory"] = values
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise RewriteError(f"{prefix}: every entry must be a string", location)
        url = source_url(value, prefix, location)
        if url is not None:
            out.fetches.append(Fetch(value, node_id, "directory", "input", token, index, ref=url))
            continue
        decoded = _decode_inline(value, prefix, location, allow_name=False)
        if decoded is None:  # unreachable: names are refused above when allow_name is False
            raise RewriteError(f"{prefix}: entries must be URLs or base64 data", location)
        relpath = f"{token}/{index:04d}.{decoded[1]}"
        out.inline_files.append(InlineFile(relpath, decoded[0], location, prefix))
        values[index] = relpath
    out.directories[node_id] = token


def _media(out: Rewritten, node_id: str, input_name: str, noun: str, token: str) -> None:
    inputs = out.prompt[node_id]["inputs"]
    value: str = inputs[input_name]
    location = f"prompt.{node_id}.inputs.{input_name}"
    prefix = f"Failed to download {noun} for node {node_id}"
    url = source_url(value, prefix, location)
    if url is not None:
        out.fetches.append(Fetch(value, node_id, input_name, "input", "", ref=url))
        return
    decoded = _decode_inline(value, prefix, location, allow_name=True)
    if decoded is None:
        out.local_inputs.append(LocalInput(value, location, prefix))
        return
    encoded, ext = decoded
    relpath = f"{token}-{_name_token(node_id)}-{_name_token(input_name)}.{ext}"
    out.inline_files.append(InlineFile(relpath, encoded, location, prefix))
    inputs[input_name] = relpath


def _name_token(value: str) -> str:
    return value if _SAFE_TOKEN.fullmatch(value) else hashlib.sha256(value.encode()).hexdigest()[:12]


def _decode_inline(value: str, prefix: str, location: str, *, allow_name: bool) -> tuple[str, str] | None:
    """(base64 text, extension) for base64 / data: URI values; None for a local file name (when allowed).

    Base64 is recognised first, by decoding its first bytes and finding a known file type there: JPEG
    base64 starts with "/9j/" and other base64 may hold "/" anywhere, so neither "/" nor "." makes a value a
    file name by itself. A value is a file name only when it is no base64 media, not longer than
    MAX_NAME_LENGTH, and holds "." or "/".
    """
    match = _DATA_URI.fullmatch(value.strip())
    if match:
        encoded = match.group(3)
        head = _head_bytes(encoded)
        if head is None:
            raise invalid_base64(prefix, location)
        ext = sniff_extension(head) or extension_for_mime(match.group(1))
        if ext is None:
            raise RewriteError(f"{prefix}: unsupported media type in data: URI '{match.group(1)}'", location)
        return encoded, ext
    if value.lower().startswith("data:"):
        raise RewriteError(f"{prefix}: only base64 data: URIs are supported", location)
    if "://" in value:
        raise RewriteError(
            f"{prefix}: unsupported URL scheme (supported schemes: {supported_schemes()})", location
        )
    head = _head_bytes(value)
    ext = sniff_extension(head) if head else None
    if ext is not None:
        return value, ext
    if len(value) <= MAX_NAME_LENGTH and ("." in value or "/" in value):
        if not allow_name:
            raise RewriteError(f"{prefix}: entries must be URLs or base64 data, not file names", location)
        _check_local_name(value, prefix, location)
        return None
    if head is None:
        raise invalid_base64(prefix, location)
    raise RewriteError(
        f"{prefix}: Failed to parse base64 encoded file: Could not determine file type from base64 data",
        location,
    )


def _head_bytes(text: str) -> bytes | None:
    """The first bytes of base64 text (enough to recognise a file type), or None if it is no base64."""
    head = _WHITESPACE.sub("", text[: _HEAD_CHARS * 2])[:_HEAD_CHARS]
    if not head:
        return None
    try:
        return b64decode_text(head[: len(head) - len(head) % 4] or head)
    except ValueError:
        return None


def invalid_base64(prefix: str, location: str) -> RewriteError:
    return RewriteError(f"{prefix}: Failed to parse base64 encoded file: invalid base64 data", location)


def _check_local_name(value: str, prefix: str, location: str) -> None:
    if _ANNOTATION.fullmatch(value):
        raise RewriteError(
            f"{prefix}: only files in the input directory can be referenced: {value}", location
        )
    if not is_safe_relative(value) or value.startswith("/"):
        raise RewriteError(
            f"{prefix}: file names must be relative to the input directory without '..': {value}", location
        )
