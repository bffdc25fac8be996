"""Generate the CRDs (ComfyUIInstance, ComfyUIModelLibrary) from the pydantic models.

    python -m comfyui_operator.crdgen --write   # write crds/, helm/crds/, docs/crd-reference.md and
                                                # docs/library-reference.md
    python -m comfyui_operator.crdgen --check   # exit 1 when a committed file differs

The pydantic JSON schema is turned into a structural OpenAPI v3 schema: `$ref`s inlined, `Optional` unions
collapsed, titles dropped, `additionalProperties: false` dropped (the API server prunes unknown fields),
free-form objects marked `x-kubernetes-preserve-unknown-fields`, and every `pattern` replaced by a CEL rule
whose message says what the value must be (`api.PATTERN_MESSAGES`). In the CRD, each field's
description also states its default, bounds and format, which `kubectl explain` shows nowhere else.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic.config import JsonDict

from comfyui_operator import api, library_api
from comfyui_operator.fileio import write_atomic

CRD_DIRS = ("crds", "helm/crds")

_DROP = {"title"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**_resolve(target, defs), **{k: v for k, v in node.items() if k not in _DROP}}
        return _resolve(merged, defs) if "$ref" in merged else merged
    any_of = node.get("anyOf")
    if isinstance(any_of, list) and any(branch == {"type": "null"} for branch in any_of):
        rest = [branch for branch in any_of if branch != {"type": "null"}]
        del node["anyOf"]
        if node.get("default", "x") is None:
            del node["default"]
        if len(rest) == 1:
            inner = _resolve(rest[0], defs)
            return _resolve({**inner, **node}, defs)
        node["anyOf"] = rest
    return {key: _resolve(value, defs) for key, value in node.items() if key not in _DROP}


def _pattern_rule(node: dict[str, Any]) -> dict[str, str]:
    """The CEL rule that replaces a node's `pattern`: same check, a message a user can act on. (No
    messageExpression quoting the value: the API server's cost estimate for one on every string field of the
    schema exceeds the CRD's budget 100 times over.)"""
    pattern = str(node["pattern"])
    message = api.PATTERN_MESSAGES.get(pattern)
    if message is None:
        raise ValueError(f"pattern {pattern!r} has no entry in api.PATTERN_MESSAGES")
    if "'" in pattern:
        raise ValueError(f"pattern {pattern!r} can not be quoted in CEL")
    check = f"self.matches(r'{pattern}')"
    if node.get("x-kubernetes-int-or-string"):
        check = f"type(self) != string || {check}"
    return {"rule": check, "message": message}


def _explained(node: Any) -> Any:
    """Append the default, bounds and format to every description (recursively), for `kubectl explain`."""
    if isinstance(node, list):
        return [_explained(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _explained(value) for key, value in node.items()}
    if "description" not in out:
        return out
    details = []
    if "default" in out and out["default"] != {}:
        details.append(f"Default: {json.dumps(out['default'])}.")
    if "minimum" in out and "maximum" in out:
        details.append(f"From {out['minimum']} to {out['maximum']}.")
    elif "minimum" in out:
        details.append(f"At least {out['minimum']}.")
    elif "maximum" in out:
        details.append(f"At most {out['maximum']}.")
    if "maxItems" in out:
        details.append(f"At most {out['maxItems']} entries.")
    if "pattern" in out:
        message = api.PATTERN_MESSAGES.get(str(out["pattern"]), "")
        details.append(message[:1].upper() + message[1:] + "." if message else "")
    if details:
        out["description"] = " ".join([str(out["description"]), *filter(None, details)])
    return out


def _structural(node: Any) -> Any:
    """Make one resolved schema node structural (recursively)."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(sub) for name, sub in value.items()}
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict) and "properties" not in node:
                out[key] = _structural(value)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("items", "anyOf"):
            out[key] = _structural(value)
        else:
            out[key] = value
    if "properties" in out or "x-kubernetes-preserve-unknown-fields" in out:
        out.setdefault("type", "object")
    if "maxLength" in out and out.get("type") == "object":  # pydantic writes dict max_length as maxLength
        out["maxProperties"] = out.pop("maxLength")
    if "minLength" in out and out.get("type") == "object":
        out["minProperties"] = out.pop("minLength")
    if "pattern" in out:
        out["x-kubernetes-validations"] = [*out.get("x-kubernetes-validations", []), _pattern_rule(out)]
        del out["pattern"]
    return out


def model_schema(model: type[api.ApiModel], *, explain: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model (descriptions with defaults and bounds when
    `explain`)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    resolved = _resolve(raw, defs)
    result: dict[str, Any] = _structural(_explained(resolved) if explain else resolved)
    return result


def _instance_columns() -> list[dict[str, Any]]:
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            "description": "Whether all replicas serve requests.",
        },
        {
            "name": "Replicas",
            "type": "string",
            "jsonPath": ".status.readyReplicas",
            "description": "Ready pods.",
        },
        {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas", "priority": 1},
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            "priority": 1,
        },
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "description": "Service URL."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def _library_columns() -> list[dict[str, Any]]:
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            "description": "Whether every model is on the volume and verified.",
        },
        {
            "name": "Models",
            "type": "integer",
            "jsonPath": ".status.readyModels",
            "description": "Ready models.",
        },
        {
            "name": "Total",
            "type": "integer",
            "jsonPath": ".status.totalModels",
            "description": "Models in the spec.",
        },
        {"name": "Failed", "type": "integer", "jsonPath": ".status.failedModels", "priority": 1},
        {
            "name": "Reason",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
            "priority": 1,
        },
        {
            "name": "Claim",
            "type": "string",
            "jsonPath": ".status.claimName",
            "description": "The volume's claim.",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


@dataclass(frozen=True)
class CrdKind:
    """One kind of the API group and where its generated files go."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec_model: type[api.ApiModel]
    status_model: type[api.ApiModel]
    name_rule: JsonDict
    name_message: str
    description: str
    columns: list[dict[str, Any]]
    scale: bool
    reference_file: str
    source: str

    @property
    def file_name(self) -> str:
        return f"{api.GROUP}_{self.plural}.yaml"

    @property
    def header(self) -> str:
        return (
            f"# Generated by `python -m comfyui_operator.crdgen --write` from {self.source}. Do not edit.\n"
        )


INSTANCE = CrdKind(
    kind=api.KIND,
    plural=api.PLURAL,
    singular=api.SINGULAR,
    short_names=tuple(api.SHORT_NAMES),
    spec_model=api.ComfyUIInstanceSpec,
    status_model=api.ComfyUIInstanceStatus,
    name_rule=api.NAME_RULE,
    name_message=api.NAME_MESSAGE,
    description="A ComfyUI service: ComfyUI and the comfyui-api sidecar on GPU pods behind a Service.",
    columns=_instance_columns(),
    scale=True,
    reference_file="docs/crd-reference.md",
    source="comfyui_operator/api.py",
)
LIBRARY = CrdKind(
    kind=library_api.KIND,
    plural=library_api.PLURAL,
    singular=library_api.SINGULAR,
    short_names=tuple(library_api.SHORT_NAMES),
    spec_model=library_api.ComfyUIModelLibrarySpec,
    status_model=library_api.ComfyUIModelLibraryStatus,
    name_rule=library_api.NAME_RULE,
    name_message=library_api.NAME_MESSAGE,
    description="A shared model volume that a sync Job fills from a manifest; instances mount it read-only.",
    columns=_library_columns(),
    scale=False,
    reference_file="docs/library-reference.md",
    source="comfyui_operator/library_api.py",
)
KINDS = (INSTANCE, LIBRARY)
CRD_FILE_NAME = INSTANCE.file_name


def root_schema(kind: CrdKind = INSTANCE, *, explain: bool = True) -> dict[str, Any]:
    """The openAPIV3Schema of the kind's CRD."""
    spec_schema = model_schema(kind.spec_model, explain=explain)
    if "required" not in spec_schema:
        spec_schema["default"] = {}
    status_schema = model_schema(kind.status_model, explain=explain)
    return {
        "type": "object",
        "x-kubernetes-validations": [kind.name_rule],
        "description": kind.description,
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            # metadata.name is declared so the name rule's fieldPath can point at it.
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": spec_schema,
            "status": status_schema,
        },
        **({"required": ["spec"]} if "required" in spec_schema else {}),
    }


def build_crd(kind: CrdKind = INSTANCE) -> dict[str, Any]:
    """The complete CustomResourceDefinition as a dict."""
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{api.GROUP}",
            "labels": {
                "app.kubernetes.io/name": "comfyui-operator",
                "app.kubernetes.io/part-of": "comfyui-operator",
            },
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": root_schema(kind)},
                }
            ],
        },
    }


def render_crd(kind: CrdKind = INSTANCE) -> str:
    """The CRD as the YAML text committed under crds/ and helm/crds/."""
    return kind.header + yaml.safe_dump(build_crd(kind), sort_keys=False, width=120, allow_unicode=True)


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"[]{_type_of(node.get('items') or {})}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    return kind


def _rows(node: dict[str, Any], path: str, required: bool) -> list[str]:
    details = []
    if "default" in node:
        details.append(f"default `{json.dumps(node['default'])}`")
    if "enum" in node:
        details.append("one of " + ", ".join(f"`{value!s}`" if value else '`""`' for value in node["enum"]))
    for key, label in (("minimum", "min"), ("maximum", "max"), ("maxItems", "max items")):
        if key in node:
            details.append(f"{label} {node[key]}")
    for rule in node.get("x-kubernetes-validations") or []:
        details.append(f"rule: {rule['message']}")
    description = str(node.get("description", "")).replace("|", "\\|").replace("\n", " ")
    extra = "; ".join(details).replace("|", "\\|")
    rows = [f"| `{path}` | {_type_of(node)} | {'yes' if required else ''} | {description} | {extra} |"]
    child = node.get("items") if node.get("type") == "array" else node
    suffix = "[]" if node.get("type") == "array" else ""
    for name, sub in ((child or {}).get("properties") or {}).items():
        rows += _rows(sub, f"{path}{suffix}.{name}", name in ((child or {}).get("required") or []))
    return rows


def render_reference(kind: CrdKind = INSTANCE) -> str:
    """Every field of spec and status with type, default, bounds and description (docs/*-reference.md)."""
    schema = root_schema(kind, explain=False)  # the table has its own column for defaults and checks
    header = "| Field | Type | Required | Description | Defaults and checks |\n|---|---|---|---|---|"
    subresources = (
        "Subresources: `status`, `scale` (`.spec.replicas`, `.status.replicas`, `.status.selector`)."
        if kind.scale
        else "Subresources: `status`."
    )
    parts = [
        f"# {kind.kind} reference ({api.API_VERSION})",
        "",
        f"<!-- Generated by `python -m comfyui_operator.crdgen --write` from {kind.source}. Do not edit. -->",
        "",
        f"Kind `{kind.kind}`, plural `{kind.plural}`, short name `{kind.short_names[0]}`, namespaced. "
        f"{subresources} `kubectl explain {kind.singular}.spec` shows the same descriptions.",
        "",
        "Object-wide rule: metadata.name " + kind.name_message + ".",
        "",
        "## spec",
        "",
        header,
        *_rows(schema["properties"]["spec"], "spec", False)[1:],
        "",
        "## status",
        "",
        header,
        *_rows(schema["properties"]["status"], "status", False)[1:],
        "",
    ]
    return "\n".join(parts)


def crd_paths(root: Path, kind: CrdKind = INSTANCE) -> list[Path]:
    return [root / directory / kind.file_name for directory in CRD_DIRS]


def generated_files(root: Path) -> dict[Path, str]:
    """Every generated file under `root` and its expected content."""
    files: dict[Path, str] = {}
    for kind in KINDS:
        files.update(dict.fromkeys(crd_paths(root, kind), render_crd(kind)))
        files[root / kind.reference_file] = render_reference(kind)
    return files


def stale_files(root: Path) -> list[Path]:
    """Generated files under `root` whose content differs from what the models give (missing files count)."""
    return [
        path for path, text in generated_files(root).items() if not path.is_file() or path.read_text() != text
    ]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comfyui_operator.crdgen", description=__doc__.split("\n")[0]
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the CRD files")
    mode.add_argument("--check", action="store_true", help="fail when the committed files differ")
    mode.add_argument("--print", action="store_true", help="print the CRD to stdout")
    parser.add_argument("--root", type=Path, default=_repo_root(), help="repository root")
    args = parser.parse_args(argv)
    if args.print:
        sys.stdout.write("---\n".join(render_crd(kind) for kind in KINDS))
        return 0
    if args.write:
        for path, text in generated_files(args.root).items():
            write_atomic(path, text)
            print(f"wrote {path}")
        return 0
    stale = stale_files(args.root)
    for path in stale:
        print(f"{path} is out of date: run `python -m comfyui_operator.crdgen --write`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
