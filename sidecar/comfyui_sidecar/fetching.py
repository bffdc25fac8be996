"""The seam between prompt rewriting (pure) and downloading (I/O).

`rewrite` turns a request's prompt into a rewritten prompt plus a list of `Fetch` items: URL values that
must be downloaded before the prompt can run. A `Fetcher` (the cache, `comfyui_sidecar.cache`) resolves
them into the value the prompt should carry instead, and keeps the files pinned (not evictable) while the
prompt runs. `apply_fetched` writes those values back into the prompt. Rewriting and applying are pure;
only the fetcher does I/O.
"""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from comfyui_sidecar.egress.urls import Url

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def header_name(value: str) -> str:
    """The one header validator (names): an RFC 9110 token, so no CR/LF or separators can get in."""
    if not _TOKEN.fullmatch(value):
        raise ValueError("must be an HTTP header name (letters, digits, !#$%&'*+-.^_`|~ only; no CR or LF)")
    return value


def header_value(value: str) -> str:
    """The one header validator (values): no CR, LF or other control characters (tab allowed)."""
    if _CONTROL.search(value):
        raise ValueError("must not contain CR, LF or other control characters")
    return value


HeaderName = Annotated[str, AfterValidator(header_name)]
HeaderValue = Annotated[str, AfterValidator(header_value)]


class _Auth(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BearerAuth(_Auth):
    type: Literal["bearer"]
    token: HeaderValue


class BasicAuth(_Auth):
    type: Literal["basic"]
    username: str
    password: str


class HeaderAuth(_Auth):
    type: Literal["header"]
    header_name: HeaderName
    header_value: HeaderValue


class QueryAuth(_Auth):
    type: Literal["query"]
    query_param: str
    query_value: str


class S3Auth(_Auth):
    type: Literal["s3"]
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    endpoint: str | None = None
    region: str | None = None


DownloadAuth = Annotated[
    BearerAuth | BasicAuth | HeaderAuth | QueryAuth | S3Auth, Field(discriminator="type")
]


class Credential(BaseModel):
    """Per-request credentials for URLs matching `url_pattern` (contract 4.4: `**`, `*`, `?` globs)."""

    model_config = ConfigDict(extra="ignore")
    url_pattern: str
    auth: DownloadAuth


FetchKind = Literal["input", "model"]


@dataclass(frozen=True)
class Fetch:
    """One URL value in the prompt that must be downloaded before the prompt runs.

    kind "input": a media input; `folder` is the sub-directory of the input directory the link goes into
      ("" for the input directory itself, the request id for image directories).
    kind "model": a model-loader input; `folder` is ComfyUI's model folder name (e.g. "checkpoints").
    `index` is the position inside a list value (image directories), else None.
    `ref` is the URL as parsed by rewriting (parsed once; the fetcher parses `url` when it is missing).
    """

    url: str
    node_id: str
    input_name: str
    kind: FetchKind
    folder: str
    index: int | None = None
    ref: Url | None = field(default=None, compare=False, repr=False)


class FetchError(Exception):
    """A fetch that failed for a reason the client should see (message is safe to return; no secrets).

    `item` is the prompt input that failed, when the fetcher knows it (see `describe_failure`).
    """

    def __init__(self, message: str, *, status: int = 400, item: Fetch | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.item = item


_MEDIA_NOUNS = {"image": "image", "video": "video", "file": "video", "audio": "audio"}


def describe_failure(error: FetchError) -> tuple[str, str]:
    """The client-facing (message, location) of a failed fetch, worded as comfyui-api does (contract 2.4):

    `Failed to download image for node 3: <cause>` at `prompt.3.inputs.image`, and
    `Failed to process model for node 4: <cause>` at `prompt.4.inputs`.
    """
    item = error.item
    if item is None:
        return error.message, "prompt"
    node = item.node_id
    if item.kind == "model":
        return f"Failed to process model for node {node}: {error.message}", f"prompt.{node}.inputs"
    if item.index is not None:
        return (
            f"Failed to download images for node {node}: {error.message}",
            f"prompt.{node}.inputs.{item.input_name}",
        )
    noun = _MEDIA_NOUNS.get(item.input_name, "file")
    return (
        f"Failed to download {noun} for node {node}: {error.message}",
        f"prompt.{node}.inputs.{item.input_name}",
    )


class Fetcher(Protocol):
    def pin(
        self, items: Sequence[Fetch], credentials: Sequence[Credential]
    ) -> AbstractAsyncContextManager[Mapping[Fetch, str]]:
        """Download (or reuse) every item and yield item -> value the prompt should carry.

        For inputs the value is the file name relative to the input directory; for models the file name inside
        its model folder. The files stay pinned (never evicted) until the context exits. Raises FetchError.
        """
        ...


class NoDownloads:
    """A fetcher for a sidecar without a cache: every URL is refused with a clear error."""

    @asynccontextmanager
    async def pin(
        self, items: Sequence[Fetch], credentials: Sequence[Credential]
    ) -> AsyncIterator[Mapping[Fetch, str]]:
        if items:
            raise FetchError(f"URL downloads are not enabled on this sidecar: {items[0].url}")
        yield {}


def apply_fetched(prompt: Mapping[str, Any], resolved: Mapping[Fetch, str]) -> dict[str, Any]:
    """Return a copy of `prompt` with every fetched URL replaced by its resolved value."""
    out: dict[str, Any] = copy.deepcopy(dict(prompt))
    for item, value in resolved.items():
        inputs = out[item.node_id]["inputs"]
        if item.index is None:
            inputs[item.input_name] = value
        else:
            inputs[item.input_name][item.index] = value
    return out
