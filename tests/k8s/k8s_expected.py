"""What the operator promises for an instance (its own pure builders), checked against the live cluster."""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

from comfyui_operator import api, builders
from comfyui_operator.settings import OperatorSettings, load_settings
from k8s_compare import missing_from
from k8s_kubectl import Kubectl, Manifest
from k8s_operator import env_from_deployment


def chart_settings(deployment: Manifest) -> OperatorSettings:
    """The operator settings the chart's Deployment configures (the same ones the local process gets)."""
    env = env_from_deployment(deployment, pod_name="settings-probe", next_port=lambda: 0)
    with mock.patch.dict(os.environ, env):
        return load_settings()


def promised_objects(live: Manifest, settings: OperatorSettings) -> list[dict[str, Any]]:
    meta = live["metadata"]
    ref = builders.InstanceRef(meta["name"], meta["namespace"], meta["uid"], meta.get("generation", 1))
    return builders.build_all(ref, api.parse_spec(live["spec"]), settings)


def differences_from_builders(kubectl: Kubectl, live: Manifest, settings: OperatorSettings) -> list[str]:
    """Every field the builders produce must be on the object the API server holds (server defaults aside)."""
    problems: list[str] = []
    namespace = live["metadata"]["namespace"]
    for built in promised_objects(live, settings):
        kind, name = built["kind"], built["metadata"]["name"]
        server = kubectl.get(kind, name, namespace)
        if server is None:
            problems.append(f"{kind}/{name}: not found")
            continue
        problems += [f"{kind}/{name}: {p}" for p in missing_from(built, server)]
    return problems
