"""Where a job's models are: the placement state a sidecar publishes (`GET /internal/placement`) and the
models a workflow needs. Pure (no I/O), light imports: the router imports this module.

Model names are `<folder>/<name>`: the ComfyUI model folder of the loader input (the one loader table,
`loaders.py`) and the value ComfyUI is given. A URL value (`https://…/x.safetensors`, `s3://…`, `hf://…`) is
named as the cache names its download, `<url_hash(url)><extension of the URL's path>`, which is what the
rewritten prompt carries. For a URL whose path has no extension the download's extension is only known after
it (`Content-Disposition`, MIME type): the name is then `<folder>/<hash32>` and `held_models` matches it with
any extension.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from comfyui_sidecar.egress.urls import scheme_of
from comfyui_sidecar.filenames import HASH_LENGTH, path_extension, url_hash
from comfyui_sidecar.loaders import LoaderTable, loader_table
from comfyui_sidecar.model_paths import canonical_folder

PLACEMENT_PATH = "/internal/placement"
PLACEMENT_VERSION: Literal[1] = 1


class ComfyUIPlacement(BaseModel):
    """One ComfyUI of the pod (one GPU in the per-GPU mode)."""

    model_config = ConfigDict(extra="ignore")

    index: int = Field(ge=0, description="0-based; its port is 8188 + index")
    up: bool = Field(description="the sidecar's websocket to this ComfyUI is open")
    queue_depth: int = Field(ge=0, description="prompts pending or running on this ComfyUI")
    loaded_models: list[str] = Field(
        default_factory=list,
        description="`<folder>/<name>` the sidecar infers this ComfyUI holds, most recent first: models "
        "whose loader nodes ComfyUI ran or served from its cache for the latest prompts (docs/sidecar.md)",
    )


class Placement(BaseModel):
    """The answer of `GET /internal/placement`. Readers must ignore fields they do not know (later versions
    only add fields; an incompatible change would raise `version`)."""

    model_config = ConfigDict(extra="ignore")

    pod: str = Field(description="POD_NAME, else the host name")
    ready: bool = Field(description="the same as GET /ready")
    draining: bool = Field(description="GET /drain or SIGTERM began: the pod is leaving")
    queue_depth: int = Field(ge=0, description="pending + running over all local ComfyUIs")
    max_queue_depth: int = Field(ge=0, description="MAX_QUEUE_DEPTH; 0 = no limit")
    comfyuis: list[ComfyUIPlacement]
    cached_models: list[str] = Field(
        default_factory=list,
        description="`<folder>/<name>` of the links in the cache's model tree (downloaded models)",
    )
    version: Literal[1] = PLACEMENT_VERSION


def model_name(folder: str, value: str) -> str:
    """`<folder>/<name>` of one loader input value (see the module's docstring for URLs)."""
    folder = canonical_folder(folder)
    if scheme_of(value) is None:
        return f"{folder}/{value}"
    return f"{folder}/{url_hash(value)}{path_extension(value)}"


def loader_models(prompt: Mapping[str, Any], loaders: LoaderTable | None = None) -> dict[str, set[str]]:
    """{node id: `<folder>/<name>` it names} of the prompt's model-loader nodes (API format: {node id:
    {class_type, inputs}}). `loaders` defaults to the built-in table; pass `loader_table(EXTRA_MODEL_LOADERS)`
    for custom loaders. Inputs that are links or not strings are skipped; malformed nodes are ignored."""
    table = loaders if loaders is not None else loader_table()
    found: dict[str, set[str]] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping):
            continue
        class_type, inputs = node.get("class_type"), node.get("inputs")
        folders = table.get(class_type) if isinstance(class_type, str) else None
        if not folders or not isinstance(inputs, Mapping):
            continue
        names = {
            model_name(folder, value)
            for input_name, folder in folders.items()
            if isinstance(value := inputs.get(input_name), str) and value
        }
        if names:
            found[str(node_id)] = names
    return found


def workflow_models(prompt: Mapping[str, Any], loaders: LoaderTable | None = None) -> set[str]:
    """Every `<folder>/<name>` the prompt's model-loader nodes name (see `loader_models`)."""
    return set().union(*loader_models(prompt, loaders).values())


def _without_extension(name: str) -> str | None:
    """`<folder>/<hash32>` of a cache name `<folder>/<hash32><ext>`, else None."""
    folder, _, file = name.rpartition("/")
    stem = file[:HASH_LENGTH]
    if len(stem) == HASH_LENGTH and (len(file) == HASH_LENGTH or file[HASH_LENGTH] == "."):
        return f"{folder}/{stem}"
    return None


def held_models(wanted: Collection[str], held: Iterable[str]) -> set[str]:
    """The names of `wanted` that `held` has: the same name, or a cache name of an extensionless URL
    (`<folder>/<hash32>`) held with the extension its download got."""
    held_set = set(held)
    found = {name for name in wanted if name in held_set}
    stems = {stem for name in held_set if (stem := _without_extension(name)) is not None}
    found.update(name for name in wanted if name not in found and name in stems)
    return found
