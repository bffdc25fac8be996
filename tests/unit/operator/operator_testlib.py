"""Helpers shared by the operator's unit tests (no cluster, no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from comfyui_operator import api, builders, library_api, library_builders
from comfyui_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"


def fixed_settings(**overrides: Any) -> OperatorSettings:
    """Settings independent of the environment the tests run in."""
    values: dict[str, Any] = {
        "namespaces": [],
        "sidecar_image": "ghcr.io/comfyui-operator/sidecar:0.1.0",
        "comfyui_image": "ghcr.io/saladtechnologies/comfyui-api:comfy0.19.3-torch2.8.0-cuda12.8-runtime",
        "comfyui_command": ["python", "main.py"],
        "comfyui_workdir": "/opt/ComfyUI",
        "cluster_domain": "cluster.local",
    }
    values.update(overrides)
    return OperatorSettings(**values)


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def instance_of(
    doc: dict[str, Any], uid: str = "00000000-0000-0000-0000-000000000001"
) -> builders.InstanceRef:
    meta = doc["metadata"]
    return builders.InstanceRef(name=meta["name"], namespace=meta.get("namespace", "default"), uid=uid)


def spec_of(doc: dict[str, Any]) -> api.ComfyUIInstanceSpec:
    return api.parse_spec(doc.get("spec") or {})


class _ReadableDumper(yaml.SafeDumper):
    """Multi-line strings (config files in ConfigMaps) as literal blocks, so golden diffs are readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _str)


def dump_all(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_ReadableDumper, sort_keys=False, width=120)


def _example_files() -> list[Path]:
    return sorted([*EXAMPLES.glob("*.yaml"), *(EXAMPLES / "library").glob("*.yaml")])


def example_documents(kind: str = api.KIND) -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every object of `kind` in examples/*.yaml and examples/library/*.yaml."""
    return [
        (path.name, doc)
        for path in _example_files()
        for doc in load_docs(path)
        if doc.get("kind", api.KIND) == kind
    ]


def library_of(doc: dict[str, Any]) -> library_builders.LibraryRef:
    meta = doc["metadata"]
    return library_builders.LibraryRef(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        uid="00000000-0000-0000-0000-000000000002",
    )


def library_objects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """What the operator creates for one library: the claim (when it creates one), the sync Job and its
    manifest ConfigMap (the Job's uid as the API server would give it)."""
    library = library_of(doc)
    spec = library_api.parse_library_spec(doc["spec"])
    digest = library_builders.sync_digest(library, spec, fixed_settings())
    job = library_builders.build_sync_job(library, spec, fixed_settings(), digest)
    created = {**job, "metadata": {**job["metadata"], "uid": "00000000-0000-0000-0000-000000000003"}}
    objects = [job, library_builders.build_manifest_config_map(library, spec, created)]
    if spec.storage.size is not None:
        objects.insert(0, library_builders.build_claim(library, spec))
    return objects


def golden_path(file_name: str, doc: dict[str, Any]) -> Path:
    return GOLDEN / f"{file_name.removesuffix('.yaml')}--{doc['metadata']['name']}.yaml"


def render_golden(doc: dict[str, Any]) -> str:
    """Every object the builders make for one example instance, as the golden file holds them."""
    return dump_all(builders.build_all(instance_of(doc), spec_of(doc), fixed_settings()))


def golden_files() -> dict[Path, str]:
    """The builders' golden files and their expected content (`make generate` writes them)."""
    files = {golden_path(name, doc): render_golden(doc) for name, doc in example_documents()}
    for name, doc in example_documents(library_api.KIND):
        files[golden_path(name, doc)] = dump_all(library_objects(doc))
    return files
