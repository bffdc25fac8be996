"""Builders: golden files for every example, plus targeted properties.

After an intended change, regenerate the golden files (and everything else generated): `make generate`.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from comfyui_operator import api, builders
from comfyui_sidecar import settings as sidecar_settings
from comfyui_sidecar.cache import settings as cache_settings
from comfyui_sidecar.model_paths import model_paths_text
from comfyui_sidecar.settings import Settings
from operator_testlib import (
    GOLDEN,
    example_documents,
    fixed_settings,
    golden_files,
    golden_path,
    instance_of,
    render_golden,
    spec_of,
)

EXAMPLE_DOCS = example_documents()


def _build(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return builders.build_all(instance_of(doc), spec_of(doc), fixed_settings())


def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    return next(c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == name)


def _deployment(doc: dict[str, Any]) -> dict[str, Any]:
    return builders.build_deployment(instance_of(doc), spec_of(doc), fixed_settings())


def _minimal(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "demo", "namespace": "ns"}, "spec": spec}


def test_examples_are_there() -> None:
    names = {name for name, _ in EXAMPLE_DOCS}
    assert {"instance.yaml", "multi-instance.yaml", "standin-instance.yaml"} <= names
    assert len(EXAMPLE_DOCS) >= 5


@pytest.mark.parametrize(
    ("file_name", "doc"), EXAMPLE_DOCS, ids=[f"{n}:{d['metadata']['name']}" for n, d in EXAMPLE_DOCS]
)
def test_golden(file_name: str, doc: dict[str, Any]) -> None:
    golden = golden_path(file_name, doc)
    assert golden.exists(), f"{golden.name} is missing: `make generate` writes it"
    assert render_golden(doc) == golden.read_text(), f"{golden.name} differs; `make generate` rewrites it"


def test_no_stale_golden_files() -> None:
    assert sorted(GOLDEN.glob("*.yaml")) == sorted(golden_files()), "`make generate` and delete the rest"


@pytest.mark.parametrize(
    ("file_name", "doc"), EXAMPLE_DOCS, ids=[f"{n}:{d['metadata']['name']}" for n, d in EXAMPLE_DOCS]
)
def test_manifests_valid_for_kubernetes(file_name: str, doc: dict[str, Any]) -> None:
    for obj in _build(doc):
        kubernetes_validate.validate(obj, "1.34.0", strict=True)


def test_comfyui_listens_on_loopback_and_operator_flags_win() -> None:
    doc = _minimal(comfyui={"args": ["--normalvram"]})
    args = _container(_deployment(doc), "comfyui")["args"]
    assert args[0] == "--normalvram"
    assert args[args.index("--listen") + 1] == "127.0.0.1"
    assert args[args.index("--port") + 1] == "8188"
    assert args[args.index("--extra-model-paths-config") + 1] == "/cache/extra_model_paths.yaml"
    assert "ports" not in _container(_deployment(doc), "comfyui")


def test_service_exposes_only_the_sidecar() -> None:
    doc = _minimal(service={"type": "LoadBalancer", "port": 80, "annotations": {"a": "b"}})
    service = builders.build_service(instance_of(doc), spec_of(doc))
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    sidecar = _container(_deployment(doc), "sidecar")
    assert sidecar["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert service["metadata"]["annotations"] == {"a": "b"}


def test_security_context_is_locked_down() -> None:
    deployment = _deployment(_minimal())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["initContainers"] + pod["containers"]:
        context = container["securityContext"]
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False


def test_read_only_root_can_be_turned_off_for_comfyui_only() -> None:
    deployment = _deployment(_minimal(comfyui={"readOnlyRootFilesystem": False}))
    assert _container(deployment, "comfyui")["securityContext"]["readOnlyRootFilesystem"] is False
    assert _container(deployment, "sidecar")["securityContext"]["readOnlyRootFilesystem"] is True


def test_gpu_goes_to_requests_and_limits() -> None:
    doc = _minimal(
        comfyui={
            "gpu": {"count": 2, "resourceName": "amd.com/gpu"},
            "resources": {"limits": {"memory": "8Gi"}},
        }
    )
    resources = _container(_deployment(doc), "comfyui")["resources"]
    assert resources["limits"] == {"amd.com/gpu": 2, "memory": "8Gi"}
    assert resources["requests"] == {"amd.com/gpu": 2}
    no_gpu = _container(_deployment(_minimal(comfyui={"gpu": {"count": 0}})), "comfyui")["resources"]
    assert no_gpu == {}


def test_gpu_pods_tolerate_the_gpu_taint_unless_the_spec_says_otherwise() -> None:
    gpu = _deployment(_minimal(comfyui={"gpu": {"count": 1, "resourceName": "amd.com/gpu"}}))
    assert gpu["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    own = {"key": "amd.com/gpu", "operator": "Equal", "value": "mi300", "effect": "NoSchedule"}
    amd = {"gpu": {"count": 1, "resourceName": "amd.com/gpu"}}
    custom = _deployment(_minimal(comfyui=amd, tolerations=[own]))
    assert custom["spec"]["template"]["spec"]["tolerations"] == [own]
    cpu = _deployment(_minimal(comfyui={"gpu": {"count": 0}}))
    assert "tolerations" not in cpu["spec"]["template"]["spec"]


def test_models_read_only_and_cache_writable_only_for_the_sidecar() -> None:
    deployment = _deployment(_minimal(models={"claimName": "shared", "subPath": "sd"}))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "shared", "readOnly": True}
    for name, cache_read_only in (("comfyui", True), ("sidecar", False)):
        mounts = {m["name"]: m for m in _container(deployment, name)["volumeMounts"]}
        assert mounts["models"] == {
            "name": "models",
            "mountPath": "/models",
            "readOnly": True,
            "subPath": "sd",
        }
        assert mounts["cache"]["readOnly"] is cache_read_only


def test_cache_size_limit_and_budget() -> None:
    deployment = _deployment(_minimal(cache={"sizeLimit": "100Gi", "medium": "Memory"}))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"]["emptyDir"] == {"sizeLimit": "100Gi", "medium": "Memory"}
    env = {e["name"]: e.get("value") for e in _container(deployment, "sidecar")["env"]}
    assert env["CACHE_SIZE_LIMIT_BYTES"] == str(100 * 1024**3)
    assert env["CACHE_DIR"] == "/cache"


def test_secrets_only_by_reference() -> None:
    doc = _minimal(
        huggingFace={"tokenSecretRef": {"name": "hf"}}, webhook={"secretRef": {"name": "wh", "key": "secret"}}
    )
    env = {e["name"]: e for e in _container(_deployment(doc), "sidecar")["env"]}
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }
    assert env["WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "wh", "key": "secret"}
    assert "value" not in env["HF_TOKEN"]


def test_sidecar_env_names_exist_in_sidecar_settings() -> None:
    known = {name.upper() for name in sidecar_settings.Settings.model_fields}
    known |= {name.upper() for name in cache_settings.CacheSettings.model_fields}
    known |= {"HOME"}
    doc = _minimal(
        models={"claimName": "m"},
        warmup={"prompt": {"1": {}}},
        huggingFace={"tokenSecretRef": {"name": "hf"}},
        webhook={"secretRef": {"name": "wh"}},
    )
    names = {e["name"] for e in _container(_deployment(doc), "sidecar")["env"]}
    assert names - known == set()


def test_warmup_from_config_map_is_mounted() -> None:
    doc = _minimal(warmup={"configMapRef": {"name": "wu", "key": "flow.json"}})
    deployment = _deployment(doc)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["warmup"]["configMap"] == {
        "name": "wu",
        "items": [{"key": "flow.json", "path": "flow.json"}],
    }
    env = {e["name"]: e.get("value") for e in _container(deployment, "sidecar")["env"]}
    assert env["WARMUP_PROMPT_FILE"] == "/etc/comfyui-warmup/flow.json"


def test_inline_warmup_goes_into_config_map_and_rolls_pods() -> None:
    first = _minimal(warmup={"prompt": {"1": {"class_type": "A"}}})
    second = _minimal(warmup={"prompt": {"1": {"class_type": "B"}}})
    config = builders.build_config_map(instance_of(first), spec_of(first))
    assert '"class_type": "A"' in config["data"]["warmup.json"]
    annotation = builders.CONFIG_HASH_ANNOTATION
    hash_a = _deployment(first)["spec"]["template"]["metadata"]["annotations"][annotation]
    hash_b = _deployment(second)["spec"]["template"]["metadata"]["annotations"][annotation]
    assert hash_a != hash_b
    assert hash_a == _deployment(first)["spec"]["template"]["metadata"]["annotations"][annotation]


def test_comfyui_reads_the_model_paths_the_sidecar_writes() -> None:
    """One owner: the sidecar (its own settings, so folders from spec.sidecar.env count) writes the file that
    ComfyUI is pointed at; the ConfigMap holds no copy and the operator sets no headroom of its own."""
    doc = _minimal(
        models={"claimName": "m"}, sidecar={"env": [{"name": "EXTRA_MODEL_FOLDERS", "value": "ipadapter"}]}
    )
    sidecar = _container(_deployment(doc), "sidecar")
    env = {e["name"]: e["value"] for e in sidecar["env"] if "value" in e}
    settings = Settings(**{name.lower(): value for name, value in env.items()})
    args = _container(_deployment(doc), "comfyui")["args"]
    assert str(settings.model_paths_file()) == args[args.index("--extra-model-paths-config") + 1]
    assert {"mountPath": "/cache", "name": "cache", "readOnly": False} in sidecar["volumeMounts"]
    roots = yaml.safe_load(model_paths_text(settings, settings.model_dir))
    assert [roots[name]["base_path"] for name in roots] == ["/models", "/cache/models"]
    assert roots["cache_models"]["ipadapter"] == "ipadapter/"
    assert "extra_model_paths.yaml" not in builders.build_config_map(instance_of(doc), spec_of(doc))["data"]
    assert "CACHE_HEADROOM_FRACTION" not in env  # the sidecar's default is the one value


def test_pdb_only_with_more_than_one_replica() -> None:
    kinds_one = [o["kind"] for o in _build(_minimal(replicas=1))]
    kinds_two = [o["kind"] for o in _build(_minimal(replicas=2))]
    assert "PodDisruptionBudget" not in kinds_one
    assert kinds_two == ["ConfigMap", "Service", "Service", "Deployment", "PodDisruptionBudget"]


def test_every_object_is_owned_and_labelled() -> None:
    for obj in _build(_minimal(replicas=3)):
        owner = obj["metadata"]["ownerReferences"][0]
        assert owner["kind"] == api.KIND
        assert owner["controller"] is True
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "comfyui-operator"


def test_user_pod_labels_can_not_override_selector() -> None:
    deployment = _deployment(_minimal(podLabels={"team": "ml"}))
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert template_labels["team"] == "ml"
    for key, value in deployment["spec"]["selector"]["matchLabels"].items():
        assert template_labels[key] == value


def test_update_strategy_defaults_and_recreate() -> None:
    assert _deployment(_minimal())["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert _deployment(_minimal(updateStrategy={"type": "Recreate"}))["spec"]["strategy"] == {
        "type": "Recreate"
    }


def test_probes_mean_something() -> None:
    """The sidecar's startup probe only waits for it to listen; ComfyUI (loopback only) is probed through the
    sidecar's /health/comfyui with the spec's startup budget, and restarted when it stops answering."""
    deployment = _deployment(_minimal(sidecar={"startupTimeoutSeconds": 301}))
    sidecar = _container(deployment, "sidecar")
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/health"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/ready"
    comfyui = _container(deployment, "comfyui")
    startup = comfyui["startupProbe"]
    assert startup["httpGet"] == {"path": "/health/comfyui", "port": 3000}
    assert 301 <= startup["periodSeconds"] * startup["failureThreshold"] < 301 + startup["periodSeconds"]
    liveness = comfyui["livenessProbe"]
    assert liveness["httpGet"] == {"path": "/health/comfyui", "port": 3000}
    assert liveness["periodSeconds"] * liveness["failureThreshold"] <= 120
    # A hung ComfyUI is killed promptly, not after the pod's grace period (which covers a prompt's timeout).
    assert startup["terminationGracePeriodSeconds"] == liveness["terminationGracePeriodSeconds"] == 30
    assert "readinessProbe" not in comfyui  # the pod's readiness is the sidecar's /ready


def test_scheduling_fields_pass_through() -> None:
    doc = _minimal(
        nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        affinity={"nodeAffinity": {}},
        topologySpreadConstraints=[
            {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        priorityClassName="high",
        runtimeClassName="nvidia",
    )
    pod = _deployment(doc)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == {"nodeAffinity": {}}
    assert pod["topologySpreadConstraints"][0]["labelSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "comfyui", "app.kubernetes.io/instance": "demo"}
    }
    assert (pod["priorityClassName"], pod["runtimeClassName"]) == ("high", "nvidia")


def test_defaults_from_operator_settings() -> None:
    settings = fixed_settings(comfyui_image="example/comfy:1", comfyui_command=["comfyui-standin"])
    doc = _minimal()
    deployment = builders.build_deployment(instance_of(doc), spec_of(doc), settings)
    comfy = _container(deployment, "comfyui")
    assert comfy["image"] == "example/comfy:1"
    assert comfy["command"] == ["comfyui-standin"]
    assert comfy["workingDir"] == "/opt/ComfyUI"


def test_endpoint_and_selector() -> None:
    doc = _minimal(service={"port": 8080})
    assert (
        builders.endpoint(instance_of(doc), spec_of(doc), fixed_settings())
        == "http://demo.ns.svc.cluster.local:8080"
    )
    assert (
        builders.selector_string(instance_of(doc))
        == "app.kubernetes.io/name=comfyui,app.kubernetes.io/instance=demo"
    )


def test_the_sidecar_starts_first_and_drains_comfyui_on_removal() -> None:
    pod = _deployment(_minimal())["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["sidecar"]
    assert pod["initContainers"][0]["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["containers"]] == ["comfyui"]
    assert "restartPolicy" not in pod["containers"][0]
    assert pod["containers"][0]["lifecycle"] == {"preStop": {"httpGet": {"path": "/drain", "port": 3000}}}
    deployment = _deployment(_minimal(sidecar={"startupTimeoutSeconds": 900}))
    assert deployment["spec"]["progressDeadlineSeconds"] == 1500


def test_grace_period_covers_the_prompt_timeout_unless_set() -> None:
    def grace_and_wait(doc: dict[str, Any]) -> tuple[int, int]:
        deployment = _deployment(doc)
        env = {e["name"]: e.get("value") for e in _container(deployment, "sidecar")["env"]}
        return deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], int(
            env["SHUTDOWN_GRACE_PERIOD_S"]
        )

    grace, wait = grace_and_wait(_minimal(sidecar={"promptTimeoutSeconds": 900}))
    assert grace == 935
    assert wait == 900  # a prompt that started just before the drain may use its whole timeout
    assert grace_and_wait(_minimal(terminationGracePeriodSeconds=100)) == (100, 65)
    assert grace_and_wait(_minimal(terminationGracePeriodSeconds=10)) == (10, 0)


# ---- Comfy API v2: auth, links, peers ----
def _sidecar_env(doc: dict[str, Any]) -> dict[str, Any]:
    env = _container(_deployment(doc), "sidecar")["env"]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in env}


def test_api_token_comes_from_the_secret_and_no_auth_by_default() -> None:
    plain = _sidecar_env(_minimal())
    assert "API_TOKEN" not in plain
    assert "PUBLIC_BASE_URL" not in plain
    auth = {"auth": {"tokenSecretRef": {"name": "comfy-api", "key": "bearer"}, "scope": "all"}}
    env = _sidecar_env(_minimal(api={**auth, "publicBaseUrl": "https://gw.example/comfy"}))
    assert env["API_TOKEN"] == {"secretKeyRef": {"name": "comfy-api", "key": "bearer"}}
    assert env["API_TOKEN_SCOPE"] == "all"
    assert env["PUBLIC_BASE_URL"] == "https://gw.example/comfy"
    assert "TRUST_FORWARDED_HEADERS" not in env
    assert _sidecar_env(_minimal(api={"trustForwardedHeaders": True}))["TRUST_FORWARDED_HEADERS"] == "true"


def test_bad_public_urls_are_refused() -> None:
    for bad in ("gw.example", "https://gw.example/x?y=1", "ftp://gw.example", "https://gw.example/#f"):
        with pytest.raises(ValueError, match="should match pattern"):
            api.parse_spec({"api": {"publicBaseUrl": bad}})


def test_peers_are_the_pods_of_a_headless_service_that_lists_not_ready_pods() -> None:
    doc = _minimal(replicas=2, input={"sizeLimit": "2Gi"})
    objects = _build(doc)
    peers = next(o for o in objects if o["metadata"]["name"] == "demo-peers")
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    pod_labels = _deployment(doc)["spec"]["template"]["metadata"]["labels"]
    assert peers["spec"]["selector"].items() <= pod_labels.items()
    env = _sidecar_env(doc)
    assert env["PEERS_DNS"] == "demo-peers.ns.svc.cluster.local"
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["ID_KEY"] == instance_of(doc).uid
    assert env["ASSET_MAX_BYTES"] == str(1024**3)
    kubernetes_validate.validate(peers, "1.30", strict=True)


def test_custom_nodes_are_mounted_read_only_into_comfyui_only() -> None:
    doc = _minimal(customNodes={"claimName": "nodes", "subPath": "v2"})
    deployment = _deployment(doc)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["custom-nodes"]["persistentVolumeClaim"] == {"claimName": "nodes", "readOnly": True}
    mounts = {m["name"]: m for m in _container(deployment, "comfyui")["volumeMounts"]}
    assert mounts["custom-nodes"] == {
        "name": "custom-nodes",
        "mountPath": "/opt/ComfyUI/custom_nodes",
        "readOnly": True,
        "subPath": "v2",
    }
    assert "custom-nodes" not in {m["name"] for m in _container(deployment, "sidecar")["volumeMounts"]}


def test_image_pull_secrets_reach_the_pod() -> None:
    doc = _minimal(imagePullSecrets=[{"name": "registry-a"}, {"name": "registry-b"}])
    pod = _deployment(doc)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-a"}, {"name": "registry-b"}]
    assert "imagePullSecrets" not in _deployment(_minimal())["spec"]["template"]["spec"]


def test_extra_volumes_are_in_the_pod_and_mounted_as_asked() -> None:
    doc = _minimal(
        extraVolumes=[{"name": "loras", "nfs": {"server": "nfs.local", "path": "/loras"}}],
        comfyui={"extraVolumeMounts": [{"name": "loras", "mountPath": "/extra/loras", "readOnly": False}]},
    )
    deployment = _deployment(doc)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["extra-loras"] == {"name": "extra-loras", "nfs": {"server": "nfs.local", "path": "/loras"}}
    mounts = {m["name"]: m for m in _container(deployment, "comfyui")["volumeMounts"]}
    assert mounts["extra-loras"] == {"name": "extra-loras", "mountPath": "/extra/loras", "readOnly": False}


def test_comfyui_env_reaches_the_comfyui_container() -> None:
    secret_ref = {"secretKeyRef": {"name": "keys", "key": "civitai"}}
    doc = _minimal(
        comfyui={
            "env": [
                {"name": "PYTORCH_CUDA_ALLOC_CONF", "value": "expandable_segments:True"},
                {"name": "CIVITAI_TOKEN", "valueFrom": secret_ref},
            ]
        }
    )
    env = _container(_deployment(doc), "comfyui")["env"]
    assert {"name": "PYTORCH_CUDA_ALLOC_CONF", "value": "expandable_segments:True"} in env
    assert {"name": "CIVITAI_TOKEN", "valueFrom": secret_ref} in env
    sidecar_names = {e["name"] for e in _container(_deployment(doc), "sidecar")["env"]}
    assert "CIVITAI_TOKEN" not in sidecar_names
