"""Drain without failed requests: a rolling update (a changed env var) while an in-cluster client sends
prompts in a loop through the Service; every prompt succeeds (docs/operator.md, "Pod lifecycle")."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from .kube import (
    SIDECAR_IMAGE,
    Kube,
    e2e_namespace,
    incluster_scripts_config_map,
    standin_instance,
    wait_instance_ready,
)

pytestmark = pytest.mark.e2e
NAME = "drain"
LOOP_S = 100
CONCURRENCY = 4
PROMPT_S = 2.0


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    with e2e_namespace(kube, "e2e-drain") as name:
        kube.apply(incluster_scripts_config_map(name), standin_instance(NAME, name, replicas=2))
        wait_instance_ready(kube, NAME, name)
        yield name


def _client_job(namespace: str) -> dict[str, object]:
    url = f"http://{NAME}.{namespace}.svc.cluster.local:3000/prompt"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "loop", "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "loop",
                            "image": SIDECAR_IMAGE,
                            "command": [
                                "python3",
                                "/scripts/promptloop.py",
                                url,
                                str(LOOP_S),
                                str(CONCURRENCY),
                                str(PROMPT_S),
                            ],
                            "volumeMounts": [{"name": "scripts", "mountPath": "/scripts"}],
                        }
                    ],
                    "volumes": [{"name": "scripts", "configMap": {"name": "e2e-scripts"}}],
                }
            },
        },
    }


def test_a_rolling_update_under_load_fails_no_prompt(kube: Kube, namespace: str) -> None:
    old_pods = {pod["metadata"]["name"] for pod in kube.pods(namespace, f"app.kubernetes.io/instance={NAME}")}
    kube.apply(_client_job(namespace))
    kube.wait(
        lambda: kube.pods(namespace, "job-name=loop")[0]["status"]["phase"] == "Running",
        timeout=60,
        what="the client running",
    )
    time.sleep(15)  # prompts in flight on both pods
    kube.apply(
        standin_instance(NAME, namespace, replicas=2, sidecar={"env": [{"name": "E2E_ROLL", "value": "1"}]})
    )
    started = time.monotonic()

    def rolled() -> bool:
        pods = [p for p in kube.pods(namespace, f"app.kubernetes.io/instance={NAME}")]
        names = {p["metadata"]["name"] for p in pods}
        ready = [
            p
            for p in pods
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]
        return not (names & old_pods) and len(ready) == 2

    kube.wait(rolled, timeout=LOOP_S + 120, interval=2, what="the rollout to finish")
    rollout_s = time.monotonic() - started
    kube.run(
        "-n",
        namespace,
        "wait",
        "--for=condition=complete",
        "job/loop",
        f"--timeout={LOOP_S + 180}s",
        timeout=LOOP_S + 200,
    )
    logs = kube.run("-n", namespace, "logs", "job/loop").stdout.strip().splitlines()
    summary = json.loads(logs[-1])
    print(f"rolling update took {rollout_s:.0f} s; client: {summary}")
    assert summary["failures"] == [], summary
    assert summary["ok"] == summary["sent"]
    assert summary["sent"] >= LOOP_S * CONCURRENCY / (PROMPT_S * 3), summary  # the loop really ran
