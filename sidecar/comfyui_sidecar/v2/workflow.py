"""Submitted workflows (pure): the checks of POST /api/v2/jobs and core/ASSET references.

A reference is `{"__type": "core/ASSET", "info": {"id": ..., "hash"?: ..., "file_path"?: ...}}` anywhere
in the graph; `info.id` decides, the hints never override it. Each is replaced by the input-relative file name
the asset was placed under before the graph goes to ComfyUI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfyui_sidecar.v2 import schemas
from comfyui_sidecar.v2.errors import V2Error

ASSET_TYPE = "core/ASSET"
RESERVED_FIELDS = ("webhook_url", "inputs")
MAX_DEPTH = 64


@dataclass(frozen=True)
class AssetRef:
    id: str | None
    """None for a malformed reference (no `info` object or no string `info.id`)."""
    file_path: str | None


def check_submit(request: schemas.SubmitRequest) -> dict[str, str]:
    """Refuse what the contract refuses (422 with its code); return the job's labels."""
    extra = request.model_extra or {}
    for name in RESERVED_FIELDS:
        if name in extra:
            raise V2Error(422, "invalid_workflow", f"'{name}' is reserved and not accepted")
    workflow = request.workflow
    if schemas.looks_like_ui_format(workflow):
        raise V2Error(
            422,
            "workflow_format_ui",
            "this is a UI export (nodes/links); submit the API format (Export (API) in ComfyUI)",
        )
    if not workflow:
        raise V2Error(422, "invalid_workflow", "the workflow has no nodes")
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise V2Error(
                422,
                "invalid_workflow",
                f"node {node_id!r} is not an API-format node ({{class_type, inputs}})",
                {"node_errors": {str(node_id): [{"field": "class_type", "reason": "missing_input"}]}},
            )
    labels = request.metadata or {}
    problem = schemas.label_problem(labels)
    if problem is not None:
        raise V2Error(422, "metadata_invalid", problem)
    return {str(k): str(v) for k, v in labels.items()}


def _is_ref(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("__type") == ASSET_TYPE


def _parse_ref(value: Mapping[str, Any]) -> AssetRef:
    info = value.get("info")
    if not isinstance(info, Mapping) or not isinstance(info.get("id"), str) or not info["id"]:
        return AssetRef(None, None)
    path = info.get("file_path")
    return AssetRef(info["id"], path if isinstance(path, str) else None)


def find_refs(workflow: Any) -> list[AssetRef]:
    """Every core/ASSET reference in the graph, in walk order."""
    found: list[AssetRef] = []

    def walk(value: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise V2Error(422, "invalid_workflow", f"the workflow nests deeper than {MAX_DEPTH} levels")
        if _is_ref(value):
            found.append(_parse_ref(value))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, depth + 1)

    walk(workflow, 0)
    return found


def substitute(workflow: Any, names: Mapping[str, str]) -> Any:
    """A copy of the graph with every reference replaced by `names[info.id]`."""
    if _is_ref(workflow):
        ref = _parse_ref(workflow)
        return names[ref.id] if ref.id is not None else workflow
    if isinstance(workflow, Mapping):
        return {key: substitute(value, names) for key, value in workflow.items()}
    if isinstance(workflow, list):
        return [substitute(item, names) for item in workflow]
    return workflow


def isolate_outputs(workflow: Mapping[str, Any], folder: str) -> dict[str, Any]:
    """Save nodes (a non-empty string `filename_prefix`) write under `folder/`: every job gets its own output
    subfolder, so a re-run is never answered from ComfyUI's cache with another job's files."""
    result: dict[str, Any] = {}
    for node_id, node in workflow.items():
        result[node_id] = node
        if not isinstance(node, Mapping) or not isinstance(node.get("inputs"), Mapping):
            continue
        inputs = node["inputs"]
        prefix = inputs.get("filename_prefix")
        if isinstance(prefix, str) and prefix:
            result[node_id] = {
                **node,
                "inputs": {**inputs, "filename_prefix": f"{folder}/{prefix.lstrip('/')}"},
            }
    return result


def node_errors(comfy_body: Any) -> dict[str, list[dict[str, str]]]:
    """ComfyUI's 400 `node_errors` as the contract's `{node: [{field, reason, message}]}`."""
    result: dict[str, list[dict[str, str]]] = {}
    raw = comfy_body.get("node_errors") if isinstance(comfy_body, Mapping) else None
    if not isinstance(raw, Mapping):
        return result
    for node_id, node in raw.items():
        errors = node.get("errors") if isinstance(node, Mapping) else None
        items = []
        for error in errors if isinstance(errors, list) else []:
            if not isinstance(error, Mapping):
                continue
            extra = error.get("extra_info")
            field = extra.get("input_name") if isinstance(extra, Mapping) else None
            items.append(
                {
                    "field": str(field or error.get("details") or ""),
                    "reason": str(error.get("type") or "invalid"),
                    "message": str(error.get("message") or ""),
                }
            )
        result[str(node_id)] = items
    return result
