"""The router objects (spec.routing) and scale to zero (spec.scaling) in the operator: builders, the scaling
decision, and the reconciler against an in-memory Kube with a real HTTP /activity endpoint on loopback."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import kubernetes_validate
import pytest
from aiohttp import web
from comfyui_operator import api, builders, router_builders, scaling, status
from comfyui_operator.reconcile import Reconciler
from comfyui_router.activity import ActivityReport
from comfyui_router.settings import RouterSettings
from operator_testlib import fixed_settings, instance_of
from test_operator_reconcile import UID, MemoryKube, current, instance, store

ROUTED = {"replicas": 3, "routing": {}, "scaling": {"idleTimeoutSeconds": 60}}


def _objects(spec: dict[str, Any], **options: Any) -> dict[tuple[str, str], dict[str, Any]]:
    doc = {"metadata": {"name": "demo", "namespace": "ns"}, "spec": spec}
    built = builders.build_all(instance_of(doc), api.parse_spec(spec), fixed_settings(), **options)
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in built}


def test_routing_adds_a_router_deployment_pdb_and_peers_service_and_the_service_selects_the_router() -> None:
    plain = _objects({"replicas": 3})
    routed = _objects(ROUTED)
    assert set(routed) - set(plain) == {
        ("Deployment", "demo-router"),
        ("PodDisruptionBudget", "demo-router"),
        ("Service", "demo-router-peers"),
    }
    router_selector = {"app.kubernetes.io/name": "comfyui-router", "app.kubernetes.io/instance": "demo"}
    assert routed[("Service", "demo")]["spec"]["selector"] == router_selector
    assert plain[("Service", "demo")]["spec"]["selector"] == builders.selector_labels(
        instance_of({"metadata": {"name": "demo", "namespace": "ns"}})
    )
    # the replicas' own selectors never pick a router pod
    assert routed[("Service", "demo-peers")]["spec"]["selector"]["app.kubernetes.io/name"] == "comfyui"
    deployment = routed[("Deployment", "demo-router")]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"] == router_selector
    assert deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "comfyui"  # the operator watches it
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    affinity = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert affinity[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    (container,) = pod["containers"]
    assert container["command"] == ["comfyui-router"]
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert routed[("PodDisruptionBudget", "demo-router")]["spec"]["maxUnavailable"] == 1
    for obj in routed.values():
        kubernetes_validate.validate(obj, "1.30", strict=True)


def test_the_router_is_configured_from_the_spec_and_reads_its_settings() -> None:
    spec = {
        "replicas": 2,
        "routing": {"replicas": 3, "affinityMaxQueue": 4, "maxHeldJobs": 7, "holdTimeoutSeconds": 90},
        "api": {"auth": {"tokenSecretRef": {"name": "tok"}}, "publicBaseUrl": "https://x.example/c"},
        "sidecar": {
            "env": [
                {"name": "MAX_BODY_SIZE_MB", "value": "300"},
                {"name": "OTHER", "value": "x"},
                {"name": "LOG_FORMAT", "value": "text"},
            ]
        },
    }
    deployment = _objects(spec)[("Deployment", "demo-router")]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    literal = {e["name"]: e["value"] for e in env if "value" in e}
    assert literal["REPLICAS_DNS"] == "demo-peers.ns.svc.cluster.local"
    assert literal["PEERS_DNS"] == "demo-router-peers.ns.svc.cluster.local"
    assert literal["ID_KEY"] == "00000000-0000-0000-0000-000000000001"  # the sidecars' key: ids decode
    assert (literal["AFFINITY_MAX_QUEUE"], literal["MAX_HELD_JOBS"], literal["HOLD_TIMEOUT_S"]) == (
        "4",
        "7",
        "90",
    )
    assert literal["MAX_BODY_SIZE_MB"] == "300"
    assert "OTHER" not in literal
    assert literal["LOG_FORMAT"] == "text"  # the user's value, once (server-side apply refuses duplicates)
    assert len({e["name"] for e in env}) == len(env)
    assert {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}} in env
    assert deployment["spec"]["replicas"] == 3
    settings = RouterSettings(**{k.lower(): v for k, v in literal.items()})
    assert settings.affinity_max_queue == 4
    assert settings.hold_timeout_s == 90
    assert router_builders.hold_timeout_seconds(api.parse_spec({"routing": {}})) == 600  # the prompt timeout


def test_scaled_to_zero_sets_no_pods_and_keeps_the_routers() -> None:
    objects = _objects(ROUTED, scaled_to_zero=True)
    assert objects[("Deployment", "demo")]["spec"]["replicas"] == 0
    assert objects[("Deployment", "demo-router")]["spec"]["replicas"] == 2


def test_scaling_without_routing_is_refused() -> None:
    with pytest.raises(ValueError, match="scaling needs routing"):
        api.parse_spec({"scaling": {"idleTimeoutSeconds": 60}})


@pytest.mark.parametrize(
    ("activity", "before", "after"),
    [
        (None, True, True),  # no answer: nothing changes
        (None, False, False),
        ({"held": 0, "waiting": 0, "inflight": 0, "idle_seconds": 59}, False, False),
        ({"held": 0, "waiting": 0, "inflight": 0, "idle_seconds": 60}, False, True),
        ({"held": 0, "waiting": 0, "inflight": 1, "idle_seconds": 600}, False, False),
        ({"held": 0, "waiting": 0, "inflight": 0, "idle_seconds": 0}, True, True),  # stays down
        ({"held": 1, "waiting": 0, "inflight": 0, "idle_seconds": 0}, True, False),  # a job: up
        ({"held": 0, "waiting": 2, "inflight": 0, "idle_seconds": 0}, True, False),
    ],
)
def test_the_scaling_decision(activity: dict[str, Any] | None, before: bool, after: bool) -> None:
    spec = api.parse_spec(ROUTED)
    parsed = scaling.Activity.model_validate(activity) if activity else None
    assert scaling.decide(spec, parsed, before) is after
    assert scaling.decide(api.parse_spec({"replicas": 1, "routing": {}}), parsed, before) is False


def test_the_operator_reads_the_routers_activity_report() -> None:
    report = ActivityReport(held=2, waiting=1, inflight=0, idle_seconds=3.5, routers=2, replicas_ready=0)
    parsed = scaling.Activity.model_validate(report.model_dump())
    assert (parsed.held, parsed.waiting, parsed.inflight, parsed.idle_seconds) == (2, 1, 0, 3.5)


def test_an_idle_instance_scaled_to_zero_is_ready() -> None:
    deployment = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "replicas": 0}}
    observed = status.Observed(
        generation=1, desired_replicas=0, deployment=deployment, scaled_to_zero=True, router={"status": {}}
    )
    ready = status.desired_conditions(observed)[0]
    assert (ready["status"], ready["reason"]) == ("False", status.ROUTER_NOT_READY)
    observed = status.Observed(
        generation=1,
        desired_replicas=0,
        deployment=deployment,
        scaled_to_zero=True,
        router={"status": {"readyReplicas": 2}},
    )
    ready = status.desired_conditions(observed)[0]
    assert (ready["status"], ready["reason"]) == ("True", status.IDLE_SCALED_TO_ZERO)


# ---- the reconciler -------------------------------------------------------------------------------------
@pytest.fixture
async def router_activity() -> AsyncIterator[dict[str, Any]]:
    """A loopback /activity endpoint answering whatever the test puts in the dict."""
    answer: dict[str, Any] = {"held": 0, "waiting": 0, "inflight": 0, "idle_seconds": 0.0}

    async def activity(request: web.Request) -> web.Response:
        return web.json_response(answer)

    app = web.Application()
    app.add_routes([web.get("/activity", activity)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    answer["_url"] = f"http://127.0.0.1:{port}"
    yield answer
    await runner.cleanup()


def _reconciler(kube: MemoryKube, url: str, events: list[tuple[str, str]]) -> Reconciler:
    return Reconciler(
        kube=kube,  # type: ignore[arg-type]
        settings=fixed_settings(router_url=url),
        post_event=lambda body, kind, reason, message: events.append((kind, reason)),
        clock=lambda: "2026-01-01T00:00:00Z",
    )


async def test_idle_then_a_held_job_scales_to_zero_and_back(router_activity: dict[str, Any]) -> None:
    kube, events = MemoryKube(), []
    reconciler = _reconciler(kube, router_activity.pop("_url"), events)
    store(kube, instance(ROUTED))
    await reconciler.reconcile(current(kube))
    spec = api.parse_spec(ROUTED)
    assert kube.objects[("Deployment", "ns", "demo")]["spec"]["replicas"] == 3

    router_activity["idle_seconds"] = 10.0
    await reconciler.check_scaling("ns", "demo", spec)
    assert kube.objects[("Deployment", "ns", "demo")]["spec"]["replicas"] == 3

    router_activity["idle_seconds"] = 61.0
    await reconciler.check_scaling("ns", "demo", spec)
    assert kube.objects[("Deployment", "ns", "demo")]["spec"]["replicas"] == 0
    assert current(kube)["status"]["scaling"]["scaledToZero"] is True
    assert ("Normal", "ScaledToZero") in events
    assert kube.objects[("Deployment", "ns", "demo-router")]["spec"]["replicas"] == 2

    # a spec change meanwhile keeps it at zero; so does an operator that restarts (status.scaling)
    await reconciler.reconcile(current(kube))
    assert kube.objects[("Deployment", "ns", "demo")]["spec"]["replicas"] == 0
    restarted = _reconciler(kube, reconciler.settings.router_url, events)
    await restarted.reconcile(current(kube))
    assert kube.objects[("Deployment", "ns", "demo")]["spec"]["replicas"] == 0

    router_activity.update(held=1, idle_seconds=0.0)
    await restarted.check_scaling("ns", "demo", spec)
    assert kube.objects[("Deployment", "ns", "demo")]["spec"]["replicas"] == 3
    assert current(kube)["status"]["scaling"]["scaledToZero"] is False
    assert events[-1] == ("Normal", "ScaledUp")

    body = current(kube)
    del body["spec"]["scaling"]
    store(kube, body)
    await restarted.reconcile(current(kube))
    assert current(kube)["status"]["scaling"] is None  # removed with spec.scaling (null in the merge patch)
    await reconciler.close()
    await restarted.close()


async def test_removing_routing_deletes_the_router_objects_it_owns() -> None:
    kube, events = MemoryKube(), []
    reconciler = _reconciler(kube, "http://127.0.0.1:9", events)
    store(kube, instance({"replicas": 2, "routing": {}}))
    await reconciler.reconcile(current(kube))
    assert ("Deployment", "ns", "demo-router") in kube.objects
    body = current(kube)
    body["spec"] = {"replicas": 2}
    store(kube, body)
    await reconciler.reconcile(current(kube))
    assert {key for key in kube.deleted} == {
        ("Deployment", "ns", "demo-router"),
        ("PodDisruptionBudget", "ns", "demo-router"),
        ("Service", "ns", "demo-router-peers"),
    }
    selector = kube.objects[("Service", "ns", "demo")]["spec"]["selector"]
    assert selector["app.kubernetes.io/name"] == "comfyui"
    # an object of the same name that another owner holds is left alone
    kube.deleted.clear()
    foreign = copy.deepcopy(kube.applied[-1])
    foreign["kind"], foreign["metadata"]["name"] = "Service", "demo-router-peers"
    foreign["metadata"]["ownerReferences"] = [{"uid": "someone-else"}]
    kube.objects[("Service", "ns", "demo-router-peers")] = foreign
    await reconciler.reconcile(current(kube))
    assert kube.deleted == []
    assert UID
    await reconciler.close()
