"""The tier's own pure helpers, tested without a cluster."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from k8s_cluster import GPU_RESOURCE, default_nodes, fake_node, node_is_ready, remote_downloads
from k8s_compare import missing_from
from k8s_instances import condition, describe_status, in_namespace, is_ready, prerequisites
from k8s_kubectl import wait_for
from k8s_observe import (
    AuditLog,
    counter_delta,
    denied_by_rbac,
    forbidden,
    parse_audit,
    parse_metric,
    write_requests,
    writes,
)
from k8s_operator import forbidden_lines, token_kubeconfig, write_private
from k8s_tools import missing_binaries, parse_exports, skip_reason, tools_from_env

DRY_RUN = """\
mkdir -p /w/clusters/x
# Download /cache/etcd to /w/clusters/x/bin/etcd
# Download https://dl.k8s.io/release/v1.34.4/bin/linux/amd64/kube-apiserver to /w/bin/kube-apiserver
# Download https://example.invalid/etcd.tar.gz and extract etcd to /w/clusters/x/bin/etcd
cd /w && kube-scheduler --kubeconfig=/w/kubeconfig.yaml
"""


def test_remote_downloads_lists_only_urls() -> None:
    assert remote_downloads(DRY_RUN) == [
        "https://dl.k8s.io/release/v1.34.4/bin/linux/amd64/kube-apiserver",
        "https://example.invalid/etcd.tar.gz",
    ]


def test_remote_downloads_accepts_local_paths() -> None:
    assert remote_downloads("# Download /a/b/kwok to /w/bin/kwok-controller\n") == []


def test_gpu_nodes_are_tainted_and_carry_gpus() -> None:
    node = fake_node("g", gpus=8)
    assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
    assert node["spec"]["taints"] == [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"


def test_cpu_node_has_no_gpu_and_no_taint() -> None:
    node = fake_node("c")
    assert GPU_RESOURCE not in node["status"]["capacity"]
    assert "taints" not in node["spec"]


def test_default_nodes_are_two_gpu_and_one_cpu() -> None:
    gpus = [int(n["status"]["capacity"].get(GPU_RESOURCE, "0")) for n in default_nodes()]
    assert sorted(gpus) == [0, 8, 8]


def test_node_is_ready() -> None:
    assert node_is_ready({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert not node_is_ready({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})
    assert not node_is_ready({})


def test_parse_exports_and_tools(tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    names = [
        "KWOK_KUBE_APISERVER_BINARY",
        "KWOK_KUBE_CONTROLLER_MANAGER_BINARY",
        "KWOK_KUBE_SCHEDULER_BINARY",
        "KWOK_KUBECTL_BINARY",
        "KWOK_ETCD_BINARY",
        "KWOK_CONTROLLER_BINARY",
        "KWOKCTL_BINARY",
    ]
    text = "\n".join(f'export {n}="{binary}"' for n in names)
    text += f'\nexport HELM_BINARY="{tmp_path / "missing-helm"}"\nexport KUBE_VERSION="v1.34.4"\n'
    env = parse_exports(text)
    assert env["KUBE_VERSION"] == "v1.34.4"
    tools = tools_from_env(env)
    assert missing_binaries(tools) == [tmp_path / "missing-helm"]
    reason = skip_reason(tools)
    assert reason is not None
    assert "missing-helm" in reason
    assert "hack/build-tools.sh" in reason


def test_tools_from_env_names_the_missing_variable() -> None:
    with pytest.raises(KeyError, match="KUBE_VERSION"):
        tools_from_env({"KWOK_KUBE_APISERVER_BINARY": "/x"})


def _audit_line(user: str, verb: str, resource: str, code: int, name: str = "x") -> str:
    decision = "forbid" if code == 403 and resource == "secrets" else "allow"
    return json.dumps(
        {
            "user": {"username": user},
            "verb": verb,
            "responseStatus": {"code": code},
            "objectRef": {"resource": resource, "namespace": "ns", "name": name},
            "annotations": {"authorization.k8s.io/decision": decision},
            "stageTimestamp": "2026-01-01T00:00:00Z",
        }
    )


def test_audit_writes_and_forbidden(tmp_path: Path) -> None:
    sa = "system:serviceaccount:comfyui-system:op"
    path = tmp_path / "audit.log"
    path.write_text(_audit_line(sa, "get", "deployments", 200) + "\n")
    log = AuditLog(path)
    log.mark()
    with path.open("a") as handle:
        handle.write(_audit_line(sa, "patch", "deployments", 200) + "\n")
        handle.write(_audit_line(sa, "list", "secrets", 403) + "\n")
        handle.write(_audit_line(sa, "patch", "configmaps", 403) + "\n")
        handle.write(_audit_line("other", "create", "pods", 201) + "\n")
        handle.write("{not json\n")
    new = log.since_mark()
    assert [e.describe() for e in writes(new, sa)] == [
        "patch ns/deployments/x -> 200",
        "patch ns/configmaps/x -> 403",
    ]
    assert [e.verb for e in forbidden(new, sa)] == ["list", "patch"]
    assert [e.verb for e in denied_by_rbac(new, sa)] == ["list"]
    assert len(log.all()) == 5
    assert parse_audit("") == []


METRICS = """\
# HELP apiserver_request_total Counter of apiserver requests
apiserver_request_total{code="200",component="apiserver",resource="deployments",verb="APPLY",group="apps"} 3
apiserver_request_total{code="200",resource="nodes",subresource="status",verb="PATCH"} 50
apiserver_request_total{code="201",component="apiserver",resource="events",verb="POST"} 2
apiserver_request_total{code="200",component="apiserver",resource="pods",verb="GET"} 9
"""


def test_write_requests_skip_reads_and_background() -> None:
    totals = write_requests(METRICS)
    assert totals == {"APPLY deployments": 3, "POST events": 2}
    assert write_requests(METRICS, include_background=True)["PATCH nodes/status"] == 50
    assert parse_metric(METRICS, "apiserver_request_total")[3][1] == 9.0


def test_counter_delta_keeps_growth_only() -> None:
    before = write_requests(METRICS)
    after = write_requests(METRICS.replace("} 3", "} 5"))
    assert counter_delta(before, after) == {"APPLY deployments": 2}
    assert counter_delta(after, after) == {}


def test_token_kubeconfig_and_private_file(tmp_path: Path) -> None:
    user = "system:serviceaccount:a:b"
    config = token_kubeconfig("https://127.0.0.1:1", tmp_path / "ca.crt", "secret-token", user)
    target = tmp_path / "kc.yaml"
    write_private(target, yaml.safe_dump(config))
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    loaded = yaml.safe_load(target.read_text())
    assert loaded["users"][0]["user"] == {"token": "secret-token"}
    assert "client-certificate" not in json.dumps(loaded)


def test_forbidden_lines() -> None:
    text = "ok line\nAPI error 403 Forbidden: deployments.apps is forbidden\nanother 4030 line\n"
    assert forbidden_lines(text) == ["API error 403 Forbidden: deployments.apps is forbidden"]


def test_wait_for_returns_value_and_times_out() -> None:
    calls = iter([None, None, "done"])
    assert wait_for(lambda: next(calls), timeout=5, interval=0.01) == "done"
    with pytest.raises(AssertionError, match="never"):
        wait_for(lambda: None, timeout=0.05, interval=0.01, what="never")


def test_missing_from_accepts_server_defaults_and_reports_changes() -> None:
    built = {"spec": {"replicas": 2, "template": {"containers": [{"name": "a", "ports": [{"port": 3000}]}]}}}
    port = {"port": 3000, "protocol": "TCP"}
    server = {
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": 600,
            "template": {"containers": [{"name": "a", "ports": [port]}]},
        }
    }
    assert missing_from(built, server) == []
    server["spec"]["replicas"] = 3
    assert missing_from(built, server) == ["spec.replicas: expected 2, got 3"]
    assert missing_from({"a": [1, 2]}, {"a": [1]}) == ["a: expected 2 items [1, 2], got [1]"]
    assert missing_from({"a": {"b": 1}}, {}) == ["a: missing (expected {'b': 1})"]
    assert missing_from({"readOnly": False, "items": []}, {}) == []


def test_prerequisites_cover_every_reference_once() -> None:
    docs = [
        {
            "kind": "ComfyUIInstance",
            "metadata": {"name": "a"},
            "spec": {
                "models": {"claimName": "models"},
                "warmup": {"configMapRef": {"name": "w", "key": "k.json"}},
                "huggingFace": {"tokenSecretRef": {"name": "hf"}},
                "priorityClassName": "batch",
            },
        },
        {"kind": "ComfyUIInstance", "metadata": {"name": "b"}, "spec": {"models": {"claimName": "models"}}},
        {"kind": "Secret", "metadata": {"name": "hf"}},
    ]
    made = prerequisites("ns1", docs)
    kinds = sorted((m["kind"], m["metadata"]["name"]) for m in made)
    assert kinds == [
        ("ConfigMap", "w"),
        ("PersistentVolume", "ns1-models"),
        ("PersistentVolumeClaim", "models"),
        ("PriorityClass", "batch"),
    ]
    volume = next(m for m in made if m["kind"] == "PersistentVolume")
    assert volume["spec"]["claimRef"] == {"namespace": "ns1", "name": "models"}
    assert volume["spec"]["accessModes"] == ["ReadOnlyMany"]
    placed = in_namespace(made, "ns1")
    assert all(
        ("namespace" in m["metadata"]) == (m["kind"] in {"ConfigMap", "PersistentVolumeClaim"})
        for m in placed
    )


def test_instance_status_helpers() -> None:
    obj = {
        "spec": {"replicas": 2},
        "status": {
            "readyReplicas": 2,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "AllReplicasReady", "message": "2/2"}
            ],
        },
    }
    assert is_ready(obj)
    assert condition(obj, "Ready") == obj["status"]["conditions"][0]  # type: ignore[index]
    obj["status"]["readyReplicas"] = 1  # type: ignore[index]
    assert not is_ready(obj)
    assert "Ready=True(AllReplicasReady: 2/2)" in describe_status(obj)
    assert describe_status(None) == "object not found"
