"""Objects of other projects' kinds (KEDA, prometheus-operator) checked against those projects' own CRDs.

The CRDs are read from the projects' Go modules, downloaded by `go mod download` into the Go module cache at
the pinned versions below; nothing of theirs is committed here.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import yaml
from tier import tool_missing

KEDA = ("github.com/kedacore/keda/v2", "v2.21.0", "config/crd/bases")
"""The newest KEDA whose go.mod this machine's Go (1.26) accepts; v2.21.1 needs Go 1.27."""
PROMETHEUS_OPERATOR = (
    "github.com/prometheus-operator/prometheus-operator",
    "v0.85.0",
    "example/prometheus-operator-crd",
)
"""The newest version of the whole prometheus-operator module the Go module proxy serves."""
GO_TIMEOUT_S = 300


@functools.cache
def module_dir(module: str, version: str) -> Path:
    """The module's directory in the Go module cache, downloaded first if needed."""
    go = os.environ.get("GO_BINARY") or shutil.which("go")
    if go is None:
        tool_missing(f"go not found: needed to read the CRDs of {module}@{version} from the module proxy")
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    with tempfile.TemporaryDirectory() as outside_any_module:
        result = subprocess.run(
            [go, "mod", "download", "-json", f"{module}@{version}"],
            capture_output=True,
            text=True,
            timeout=GO_TIMEOUT_S,
            check=False,
            cwd=outside_any_module,
            env=env,
        )
    info = json.loads(result.stdout or "{}")
    directory = info.get("Dir")
    assert directory, f"go mod download {module}@{version}: {result.stdout}{result.stderr}"
    return Path(directory)


def crd_path(project: tuple[str, str, str], file_name: str) -> Path:
    module, version, folder = project
    return module_dir(module, version) / folder / file_name


def crd(project: tuple[str, str, str], file_name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(crd_path(project, file_name).read_text())
    return document


def openapi_to_jsonschema(node: Any, *, strict: bool = False) -> Any:
    """A CRD's OpenAPI v3 schema as JSON Schema: Kubernetes-only keys dropped. `strict` also refuses unknown
    fields where the schema lists the properties and keeps no unknown fields (what `kubectl apply` with
    server-side field validation reports), so a misspelt key fails instead of being pruned silently."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(item, strict=strict) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {
        key: openapi_to_jsonschema(value, strict=strict)
        for key, value in node.items()
        if not key.startswith("x-kubernetes-") and key != "nullable"
    }
    pattern = node.get("pattern")
    if isinstance(pattern, str) and "(?i)" in pattern[1:]:
        # Go's regexp takes inline flags anywhere (`^(?i)abort`); Python only at the start
        converted["pattern"] = "(?i)" + pattern.replace("(?i)", "")
    if (
        strict
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        converted["additionalProperties"] = False
    return converted


def schema_for(definition: dict[str, Any], api_version: str) -> dict[str, Any]:
    """The strict JSON Schema of the CRD version that `api_version` (group/version) names."""
    group, _, version = api_version.partition("/")
    assert definition["spec"]["group"] == group, (definition["spec"]["group"], group)
    (served,) = [v for v in definition["spec"]["versions"] if v["name"] == version and v["served"]]
    schema: dict[str, Any] = openapi_to_jsonschema(served["schema"]["openAPIV3Schema"], strict=True)
    # metadata is checked by the API server itself, not by the CRD's schema
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def validate(document: dict[str, Any], definition: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when the CRD's schema refuses the document."""
    assert document["kind"] == definition["spec"]["names"]["kind"], document["kind"]
    jsonschema.validate(document, schema_for(definition, document["apiVersion"]))
