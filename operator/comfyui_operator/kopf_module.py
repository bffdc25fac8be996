"""The operator as a kopf module: `kopf run -m comfyui_operator.kopf_module`, or `kopf.testing.KopfRunner`.

Importing it registers the handlers into kopf's default registry. Leader election is kopf's business here
(pass `--standalone`, or use kopf peering); the `comfyui-operator` entry point uses a Lease instead.
Settings come from the same COMFYUI_OPERATOR_* variables; /metrics starts when METRICS_PORT is not 0.
"""

from __future__ import annotations

from typing import Any

import kopf

from comfyui_operator import handlers, metrics
from comfyui_operator.kube import Kube, load_api_client
from comfyui_operator.reconcile import Reconciler
from comfyui_operator.settings import load_settings

SETTINGS = load_settings()
RECONCILER = Reconciler(kube=Kube(load_api_client()), settings=SETTINGS, post_event=handlers.post_kopf_event)
handlers.register(kopf.get_default_registry(), RECONCILER, SETTINGS)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    handlers.configure_kopf(settings)
    metrics.start_metrics_server(SETTINGS.metrics_port)
