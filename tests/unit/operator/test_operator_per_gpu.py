"""gpu.mode ComfyUIPerGPU: the pod shape (one ComfyUI container per GPU), what the sidecar is told about them,
and the status note when several GPUs feed one ComfyUI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from comfyui_operator import api, builders, status
from comfyui_operator.status import Observed
from comfyui_sidecar.settings import Settings
from operator_testlib import fixed_settings, instance_of, spec_of
from pydantic import ValidationError


def _doc(**gpu: Any) -> dict[str, Any]:
    comfyui = {"gpu": gpu, "resources": {"requests": {"memory": "16Gi"}, "limits": {"memory": "24Gi"}}}
    return {"metadata": {"name": "demo", "namespace": "ns"}, "spec": {"comfyui": comfyui}}


def _pod(doc: dict[str, Any]) -> dict[str, Any]:
    deployment = builders.build_deployment(instance_of(doc), spec_of(doc), fixed_settings())
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _arg(container: dict[str, Any], flag: str) -> str:
    args: list[str] = container["args"]
    return args[len(args) - 1 - args[::-1].index(flag) + 1]  # the last value wins, as in ComfyUI


def test_one_comfyui_container_per_gpu_each_with_one_gpu() -> None:
    pod = _pod(_doc(count=4, mode="ComfyUIPerGPU"))
    containers = pod["containers"]
    assert [c["name"] for c in containers] == ["comfyui-0", "comfyui-1", "comfyui-2", "comfyui-3"]
    for index, container in enumerate(containers):
        assert container["resources"] == {
            "limits": {"memory": "24Gi", "nvidia.com/gpu": 1},
            "requests": {"memory": "16Gi", "nvidia.com/gpu": 1},
        }
        assert (_arg(container, "--listen"), _arg(container, "--port")) == ("127.0.0.1", str(8188 + index))
        assert _arg(container, "--temp-directory") == f"/tmp/comfyui-{index}"
        assert _arg(container, "--user-directory") == f"/tmp/comfyui-{index}/user"
        assert _arg(container, "--output-directory") == builders.OUTPUT_DIR  # shared, prefixes keep apart
        assert container["startupProbe"]["httpGet"] == {"path": f"/health/comfyui/{index}", "port": 3000}
        assert container["livenessProbe"]["httpGet"]["path"] == f"/health/comfyui/{index}"
        assert container["lifecycle"]["preStop"]["httpGet"]["path"] == f"/drain/{index}"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["sizeLimit"] == "8Gi"


def test_the_sidecar_is_told_every_comfyui_and_its_temp_directory() -> None:
    pod = _pod(_doc(count=3, mode="ComfyUIPerGPU"))
    sidecar = pod["initContainers"][0]
    env = {e["name"]: e["value"] for e in sidecar["env"] if "value" in e}
    settings = Settings(**{k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields})
    ports = [int(_arg(c, "--port")) for c in pod["containers"]]
    assert settings.comfy_urls == [f"http://127.0.0.1:{port}" for port in ports]
    assert settings.comfy_temp_dirs == [Path(_arg(c, "--temp-directory")) / "temp" for c in pod["containers"]]
    assert settings.log_format == "json"
    pod_name = next(e for e in sidecar["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_the_one_comfyui_mode_keeps_its_shape() -> None:
    pod = _pod(_doc(count=2))
    (container,) = pod["containers"]
    assert container["name"] == "comfyui"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["startupProbe"]["httpGet"]["path"] == "/health/comfyui"
    assert container["lifecycle"]["preStop"]["httpGet"]["path"] == "/drain"
    assert _arg(container, "--temp-directory") == "/tmp"
    names = {e["name"] for e in pod["initContainers"][0]["env"]}
    assert "COMFYUI_URLS" not in names
    assert "LOG_FORMAT" in names


def test_per_gpu_needs_a_gpu_and_the_crd_says_so() -> None:
    with pytest.raises(ValidationError, match=r"gpu\.count must be at least 1"):
        api.parse_spec({"comfyui": {"gpu": {"count": 0, "mode": "ComfyUIPerGPU"}}})
    with pytest.raises(ValidationError):
        api.parse_spec({"comfyui": {"gpu": {"mode": "PerGPU"}}})
    assert (
        api.parse_spec({"comfyui": {"gpu": {"count": 1, "mode": "ComfyUIPerGPU"}}}).comfyui.gpu.comfyui_count
        == 1
    )


@pytest.mark.parametrize(
    ("gpu", "noted"),
    [
        ({"count": 4}, True),
        ({"count": 4, "mode": "ComfyUIPerGPU"}, False),
        ({"count": 1}, False),
        ({"count": 0}, False),
    ],
)
def test_status_says_when_only_one_gpu_is_used(gpu: dict[str, Any], noted: bool) -> None:
    spec = api.parse_spec({"comfyui": {"gpu": gpu}})
    notes = status.spec_notes(spec)
    dep = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1},
    }
    dep["status"]["updatedReplicas"] = 1
    observed = Observed(generation=1, desired_replicas=1, deployment=dep, notes=notes)
    ready = next(c for c in status.desired_conditions(observed) if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ("only one GPU is used" in ready["message"]) is noted
    if noted:
        assert "spec.comfyui.gpu.mode: ComfyUIPerGPU" in ready["message"]
        assert ready["message"].endswith("1/1 replicas ready")


def test_restarts_of_per_gpu_containers_are_reported() -> None:
    statuses = [
        {
            "name": "comfyui-2",
            "ready": False,
            "restartCount": 2,
            "lastState": {"terminated": {"exitCode": 137, "reason": "Error"}},
        }
    ]
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": statuses}}
    (problem,) = status.pod_problems(pod)
    assert problem.reason == status.COMFYUI_NOT_ANSWERING
    assert builders.is_comfyui_container("comfyui-11")
    assert not builders.is_comfyui_container("comfyui-x")
