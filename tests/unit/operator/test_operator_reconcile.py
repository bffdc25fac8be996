"""Reconciler logic against an in-memory stand-in for `Kube` (the Python interface, not an API server):
what gets applied, when status is written, which Events are posted. Real API server tests: tests/k8s."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

import kopf
import pytest
from comfyui_operator import api, handlers, metrics, reconcile, status
from comfyui_operator import kube as kube_module
from comfyui_operator.kube import KubeError
from comfyui_operator.reconcile import Reconciler, Reference
from comfyui_operator.scheduling import Debouncer
from operator_testlib import fixed_settings

UID = "11111111-2222-3333-4444-555555555555"


class MemoryKube:
    """Records calls; objects keyed by (kind, namespace, name). `refuse` makes apply fail for one kind."""

    def __init__(self) -> None:
        self.refuse: dict[str, KubeError] = {}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applied: list[dict[str, Any]] = []
        self.status_writes: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, str]] = []

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found else None

    async def list(
        self, kind: str, namespace: str, label_selector: str | None = None, field_selector: str | None = None
    ) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, ns, _), o in self.objects.items() if k == kind and ns == namespace]

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] in self.refuse:
            raise self.refuse[obj["kind"]]
        self.applied.append(copy.deepcopy(dict(obj)))
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.objects[key] = {
            **copy.deepcopy(dict(obj)),
            "status": self.objects.get(key, {}).get("status", {}),
        }
        return self.objects[key]

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.deleted.append((kind, namespace, name))
        return self.objects.pop((kind, namespace, name), None) is not None

    async def patch_status(self, namespace: str, name: str, new_status: Mapping[str, Any]) -> None:
        """A merge patch: keys the patch leaves out stay (e.g. status.scaling beside the conditions)."""
        self.status_writes.append(copy.deepcopy(dict(new_status)))
        stored = self.objects[(api.KIND, namespace, name)]
        stored["status"] = {**stored.get("status", {}), **copy.deepcopy(dict(new_status))}


def instance(spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "demo", "namespace": "ns", "uid": UID, "generation": generation},
        "spec": spec,
    }


@pytest.fixture
def kube() -> MemoryKube:
    return MemoryKube()


@pytest.fixture
def events() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def reconciler(kube: MemoryKube, events: list[tuple[str, str, str]]) -> Reconciler:
    return Reconciler(
        kube=kube,  # type: ignore[arg-type]
        settings=fixed_settings(),
        post_event=lambda body, kind, reason, message: events.append((kind, reason, message)),
        clock=lambda: "2026-01-01T00:00:00Z",
    )


def store(kube: MemoryKube, body: dict[str, Any]) -> dict[str, Any]:
    kube.objects[(api.KIND, "ns", "demo")] = copy.deepcopy(body)
    return body


def current(kube: MemoryKube) -> dict[str, Any]:
    return copy.deepcopy(kube.objects[(api.KIND, "ns", "demo")])


async def test_create_applies_everything_and_writes_status_once(
    kube: MemoryKube, reconciler: Reconciler
) -> None:
    store(kube, instance({"replicas": 2}))
    problems = await reconciler.reconcile(current(kube))
    assert problems == []
    assert [o["kind"] for o in kube.applied] == [
        "ConfigMap",
        "Service",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ]
    assert len(kube.status_writes) == 1
    written = kube.status_writes[0]
    assert written["comfyuiImage"].startswith("ghcr.io/saladtechnologies/comfyui-api:")
    assert written["sidecarImage"] == "ghcr.io/comfyui-operator/sidecar:0.1.0"
    assert written["selector"] == "app.kubernetes.io/name=comfyui,app.kubernetes.io/instance=demo"
    assert written["endpoint"] == "http://demo.ns.svc.cluster.local:3000"
    assert written["observedGeneration"] == 1


async def test_resume_without_changes_writes_no_status(kube: MemoryKube, reconciler: Reconciler) -> None:
    store(kube, instance({}))
    await reconciler.reconcile(current(kube))
    await reconciler.reconcile(current(kube))
    await reconciler.refresh_by_name("ns", "demo")
    assert len(kube.status_writes) == 1


async def test_reserved_label_message_is_clean(kube: MemoryKube, reconciler: Reconciler) -> None:
    store(kube, instance({"podLabels": {"app.kubernetes.io/name": "x"}}))
    problems = await reconciler.reconcile(current(kube))
    assert problems[0].message.startswith("spec: podLabels key 'app.kubernetes.io/name' is reserved")


async def test_invalid_spec_is_reported_not_applied(
    kube: MemoryKube, reconciler: Reconciler, events: list[tuple[str, str, str]]
) -> None:
    store(kube, instance({"replicas": -3, "comfyui": {"gpu": {"resourceName": "gpu"}}}))
    problems = await reconciler.reconcile(current(kube))
    assert [p.reason for p in problems] == [status.INVALID_SPEC]
    assert "spec.replicas" in problems[0].message
    assert "Value error" not in problems[0].message
    assert "spec.comfyui.gpu.resourceName" in problems[0].message
    assert kube.applied == []
    degraded = {c["type"]: c for c in kube.status_writes[-1]["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert events == [("Warning", "InvalidSpec", degraded["message"])]


async def test_missing_references_are_reported_once_and_objects_still_applied(
    kube: MemoryKube, reconciler: Reconciler, events: list[tuple[str, str, str]]
) -> None:
    store(kube, instance({"models": {"claimName": "models"}, "warmup": {"configMapRef": {"name": "wu"}}}))
    problems = await reconciler.reconcile(current(kube))
    assert sorted(p.message for p in problems) == [
        'ConfigMap "wu" (spec.warmup.configMapRef) not found',
        'PersistentVolumeClaim "models" (spec.models.claimName) not found',
    ]
    assert {o["kind"] for o in kube.applied} == {"ConfigMap", "Service", "Deployment"}
    await reconciler.reconcile(current(kube))  # a retry finds the same: no second write, no second Event
    assert len(kube.status_writes) == 1
    assert [e[1] for e in events] == ["MissingReference"]
    kube.objects[("PersistentVolumeClaim", "ns", "models")] = {"metadata": {"name": "models"}}
    kube.objects[("ConfigMap", "ns", "wu")] = {"metadata": {"name": "wu"}, "data": {"workflow.json": "{}"}}
    assert await reconciler.reconcile(current(kube)) == []
    degraded = {c["type"]: c for c in kube.status_writes[-1]["conditions"]}["Degraded"]
    assert degraded["status"] == "False"


async def test_scaling_down_to_one_deletes_only_our_pdb(kube: MemoryKube, reconciler: Reconciler) -> None:
    store(kube, instance({"replicas": 3}))
    await reconciler.reconcile(current(kube))
    assert ("PodDisruptionBudget", "ns", "demo") in kube.objects
    store(kube, {**current(kube), "spec": {"replicas": 1}})
    await reconciler.reconcile(current(kube))
    assert kube.deleted == [("PodDisruptionBudget", "ns", "demo")]
    kube.objects[("PodDisruptionBudget", "ns", "demo")] = {
        "metadata": {"name": "demo", "ownerReferences": []}
    }
    await reconciler.reconcile(current(kube))
    assert len(kube.deleted) == 1  # a PDB someone else owns is left alone


async def test_ready_event_when_pods_become_ready(
    kube: MemoryKube, reconciler: Reconciler, events: list[tuple[str, str, str]]
) -> None:
    store(kube, instance({}))
    await reconciler.reconcile(current(kube))
    deployment = kube.objects[("Deployment", "ns", "demo")]
    deployment["metadata"]["generation"] = 1
    deployment["status"] = {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}
    await reconciler.refresh_by_name("ns", "demo")
    assert events[-1][:2] == ("Normal", "Ready")
    assert status.ready_state(current(kube)["status"]) == "True"
    assert reconciler.tracker.counts()["True"] == 1
    reconciler.forget("ns", "demo")
    assert reconciler.tracker.counts()["True"] == 0


def test_references_and_problems() -> None:
    spec = api.parse_spec(
        {
            "models": {"libraryRef": {"name": "lib"}},
            "customNodes": {"claimName": "nodes"},
            "warmup": {"configMapRef": {"name": "wu", "key": "w.json"}},
            "huggingFace": {"tokenSecretRef": {"name": "hf"}},
        }
    )
    refs = reconcile.references(spec)
    assert [(r.kind, r.name) for r in refs] == [
        ("PersistentVolumeClaim", "nodes"),
        ("ConfigMap", "wu"),
    ]  # Secrets are never read; the library is looked up by library_link, not as a claim
    ref = Reference("ConfigMap", "wu", "w.json", "spec.warmup.configMapRef")
    assert reconcile.reference_problem(ref, {"data": {"w.json": "{}"}}) is None
    problem = reconcile.reference_problem(ref, {"data": {}})
    assert problem is not None
    assert 'has no key "w.json"' in problem.message


def test_retry_delay_backs_off_with_a_cap() -> None:
    settings = fixed_settings(retry_base_seconds=10, retry_max_seconds=300)
    assert [reconcile.retry_delay(n, settings) for n in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert reconcile.retry_delay(10_000, settings) == 300


def test_transition_events() -> None:
    def conds(degraded: tuple[str, str], ready: str = "False") -> dict[str, Any]:
        return {
            "conditions": [
                {"type": "Degraded", "status": degraded[0], "reason": degraded[1], "message": "m"},
                {"type": "Ready", "status": ready, "reason": "r", "message": "ok"},
            ]
        }

    assert reconcile.transition_events(None, conds(("True", "CrashLoop"))) == [("Warning", "CrashLoop", "m")]
    assert reconcile.transition_events(conds(("True", "CrashLoop")), conds(("True", "CrashLoop"))) == []
    assert (
        reconcile.transition_events(conds(("True", "CrashLoop")), conds(("True", "OOMKilled")))[0][1]
        == "OOMKilled"
    )
    assert reconcile.transition_events(conds(("True", "X")), conds(("False", "AsExpected"), "True")) == [
        ("Normal", "Ready", "ok")
    ]


async def test_debouncer_coalesces_bursts() -> None:
    calls: list[tuple[str, str]] = []

    async def action(namespace: str, name: str) -> None:
        calls.append((namespace, name))

    debouncer = Debouncer(action, delay_seconds=0.05)
    assert debouncer.schedule("ns", "a") is True
    for _ in range(20):
        assert debouncer.schedule("ns", "a") is False
    debouncer.schedule("ns", "b")
    for _ in range(100):
        if len(calls) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(calls) == [("ns", "a"), ("ns", "b")]
    assert debouncer.pending == 0
    debouncer.schedule("ns", "c")
    await debouncer.close()
    assert ("ns", "c") not in calls


async def test_refused_object_is_reported_as_apply_failed(
    kube: MemoryKube, reconciler: Reconciler, events: list[tuple[str, str, str]]
) -> None:
    kube.refuse["Deployment"] = KubeError(422, 'Deployment.apps "demo" is invalid: spec.template: bad volume')
    store(kube, instance({"extraVolumes": [{"name": "x", "nfs": {}}]}))
    problems = await reconciler.reconcile(current(kube))
    assert [p.reason for p in problems] == [status.APPLY_FAILED]
    assert "Deployment demo was refused" in problems[0].message
    assert reconcile.result_label(problems) == "apply_failed"
    degraded = {c["type"]: c for c in kube.status_writes[-1]["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
    assert events[-1][:2] == ("Warning", "ApplyFailed")


async def test_forbidden_is_critical_and_raised(kube: MemoryKube, reconciler: Reconciler) -> None:
    kube.refuse["ConfigMap"] = KubeError(403, "configmaps is forbidden")
    store(kube, instance({}))
    with pytest.raises(KubeError):
        await reconciler.reconcile(current(kube))
    assert metrics.HEALTH._value.get() == metrics.CRITICAL
    store(kube, instance({}))
    kube.refuse.clear()
    await reconciler.reconcile(current(kube))
    assert metrics.HEALTH._value.get() == metrics.HEALTHY


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"maxSurge": -1}, "must not be negative"),
        ({"maxUnavailable": "ten"}, "not an integer or a percentage"),
        ({"maxSurge": 0, "maxUnavailable": "0%"}, "must not both be zero"),
    ],
)
def test_update_strategy_rules(update: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        api.parse_spec({"updateStrategy": update})


async def test_refresh_of_an_unparsable_spec_does_not_crash(kube: MemoryKube, reconciler: Reconciler) -> None:
    store(kube, instance({"replicas": "many", "podLabels": {"app.kubernetes.io/x": "y"}}))
    await reconciler.refresh_by_name("ns", "demo")
    assert kube.status_writes[-1]["replicas"] == 0


async def test_namespace_being_deleted_is_a_quiet_no_op(
    kube: MemoryKube, reconciler: Reconciler, events: list[tuple[str, str, str]]
) -> None:
    terminating = KubeError(
        403, "unable to create new content in namespace ns: it is being terminated", ("NamespaceTerminating",)
    )
    kube.refuse["ConfigMap"] = terminating
    store(kube, instance({}))
    writes_before = len(kube.status_writes)
    assert await reconciler.reconcile(current(kube)) == []
    assert len(kube.status_writes) == writes_before  # no status write, no Event, not a health problem
    assert events == []
    assert metrics.HEALTH._value.get() == metrics.HEALTHY


def test_kube_error_reads_the_status_causes() -> None:
    body = (
        b'{"kind":"Status","status":"Failure","reason":"Forbidden","code":403,"message":"being terminated",'
        b'"details":{"name":"x","kind":"deployments","causes":[{"reason":"NamespaceTerminating","message":"m"}]}}'
    )
    assert kube_module._error_causes(body) == ("NamespaceTerminating",)
    assert kube_module._error_causes(b"not json") == ()
    assert not KubeError(403, "configmaps is forbidden").namespace_terminating


async def test_a_deleted_instance_is_forgotten(kube: MemoryKube, reconciler: Reconciler) -> None:
    """kopf calls no deletion handler for an object without its finalizer, so the operator forgets an instance
    (problems, the instances gauge) on the watch's DELETED event."""
    registry = kopf.OperatorRegistry()
    refresher = handlers.register(registry, reconciler, fixed_settings())
    store(kube, instance({"replicas": 0}))
    await reconciler.reconcile(current(kube))
    assert sum(reconciler.tracker.counts().values()) == 1
    raw: Any = current(kube)
    meta = kopf.Body(raw).meta
    watching: dict[str, Any] = {str(h.id): h.fn for h in registry._watching.get_all_handlers()}
    modified: Any = {"type": "MODIFIED", "object": current(kube)}
    await watching["instance_seen"](event=modified, meta=meta)
    assert sum(reconciler.tracker.counts().values()) == 1
    deleted: Any = {"type": "DELETED", "object": current(kube)}
    await watching["instance_seen"](event=deleted, meta=meta)
    assert sum(reconciler.tracker.counts().values()) == 0
    assert ("ns", "demo") not in reconciler._problems
    await refresher.close()


async def test_debouncer_never_runs_two_refreshes_of_one_instance_at_once() -> None:
    """An event during a slow refresh must not start a second, overlapping refresh (whose older observation
    could overwrite the newer status); it gets exactly one more refresh afterwards."""
    running = 0
    most = 0
    calls = 0
    release = asyncio.Event()

    async def action(namespace: str, name: str) -> None:
        nonlocal running, most, calls
        running += 1
        calls += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    debouncer = Debouncer(action, delay_seconds=0.01)
    debouncer.schedule("ns", "a")
    for _ in range(200):
        if calls == 1:
            break
        await asyncio.sleep(0.01)
    assert calls == 1
    for _ in range(5):
        debouncer.schedule("ns", "a")  # events while the refresh is still running
        await asyncio.sleep(0.05)
    assert most == 1
    release.set()
    for _ in range(200):
        if debouncer.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert (calls, most, debouncer.pending) == (2, 1, 0)


async def test_an_api_error_in_converge_is_retried_with_backoff(
    kube: MemoryKube, reconciler: Reconciler
) -> None:
    """kopf retries any other exception after a fixed 60 s and logs a stack trace; an API error becomes a
    TemporaryError with the operator's growing delay instead."""
    registry = kopf.OperatorRegistry()
    settings = fixed_settings(retry_base_seconds=10, retry_max_seconds=300)
    refresher = handlers.register(registry, reconciler, settings)
    converge = next(h.fn for h in registry._changing.get_all_handlers() if h.id == "converge")
    kube.refuse["ConfigMap"] = KubeError(503, "etcdserver: request timed out")
    raw: Any = store(kube, instance({}))
    call: Any = converge
    for retry, delay in ((0, 10), (3, 80)):
        with pytest.raises(kopf.TemporaryError) as info:
            await call(body=kopf.Body(raw), meta=kopf.Body(raw).meta, retry=retry)
        assert info.value.delay == delay
        assert "etcdserver: request timed out" in str(info.value)
    await refresher.close()


async def test_a_failed_reapply_of_a_deleted_deployment_is_retried_with_backoff(
    kube: MemoryKube, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deleted Deployment is re-applied; an API hiccup then must not leave it missing until the next spec
    change: the re-apply is retried after the operator's backoff delays (not in a hot loop)."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler, fixed_settings())
    delays: list[int] = []

    def no_wait(retry: int, settings: Any) -> int:
        delays.append(reconcile.retry_delay(retry, settings))
        return 0

    monkeypatch.setattr(handlers, "retry_delay", no_wait)
    store(kube, instance({"replicas": 1}))
    await reconciler.reconcile(current(kube))
    deployment: Any = kube.objects.pop(("Deployment", "ns", "demo"))
    failures = 2
    apply = kube.apply

    async def flaky_apply(obj: Mapping[str, Any]) -> dict[str, Any]:
        nonlocal failures
        if obj["kind"] == "Deployment" and failures:
            failures -= 1
            raise KubeError(503, "etcdserver: request timed out")
        return await apply(obj)

    monkeypatch.setattr(kube, "apply", flaky_apply)
    watching: dict[str, Any] = {str(h.id): h.fn for h in registry._watching.get_all_handlers()}
    deleted: Any = {"type": "DELETED", "object": deployment}
    await watching["deployment_changed"](event=deleted, meta=kopf.Body(deployment).meta)
    for _ in range(500):
        if ("Deployment", "ns", "demo") in kube.objects:
            break
        await asyncio.sleep(0.01)
    assert ("Deployment", "ns", "demo") in kube.objects
    assert delays == [10, 20]  # the operator's backoff: base, then twice the base
    cleanup: Any = next(h.fn for h in registry._activities.get_all_handlers() if h.id == "stop_refresher")
    await cleanup()


async def test_status_refreshes_of_one_instance_never_overlap(
    kube: MemoryKube, reconciler: Reconciler
) -> None:
    """A reconcile (kopf's converge) and a watch-event refresh of the same instance, with a slow API server:
    the second observation must wait for the first one's status write (one serializer for both paths)."""
    store(kube, instance({}))
    await reconciler.reconcile(current(kube))
    observing = 0
    most = 0
    get = kube.get

    async def slow_get(kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        nonlocal observing, most
        if kind != "Deployment":
            return await get(kind, namespace, name)
        observing += 1
        most = max(most, observing)
        await asyncio.sleep(0.05)
        observing -= 1
        return await get(kind, namespace, name)

    kube.get = slow_get  # type: ignore[method-assign]
    await asyncio.gather(
        reconciler.reconcile(current(kube)),
        reconciler.refresh_by_name("ns", "demo"),
        reconciler.refresh_by_name("ns", "demo"),
    )
    assert most == 1


async def test_health_is_the_worst_instance_not_the_last_reconcile(
    kube: MemoryKube, reconciler: Reconciler
) -> None:
    """One instance the operator can not manage (403) keeps the health critical, whatever other instances do;
    it clears when that instance reconciles again or is deleted."""
    broken = instance({})
    broken["metadata"] = {**broken["metadata"], "name": "broken"}
    kube.objects[(api.KIND, "ns", "broken")] = copy.deepcopy(broken)
    store(kube, instance({}))
    kube.refuse["ConfigMap"] = KubeError(403, "configmaps is forbidden")
    with pytest.raises(KubeError):
        await reconciler.reconcile(copy.deepcopy(broken))
    kube.refuse.clear()
    await reconciler.reconcile(current(kube))  # another instance succeeds afterwards
    assert metrics.HEALTH._value.get() == metrics.CRITICAL
    assert reconciler.tracker.unhealthy() == {"ns/broken": metrics.CRITICAL}
    reconciler.forget("ns", "broken")
    assert metrics.HEALTH._value.get() == metrics.HEALTHY


async def test_an_instance_in_an_excluded_namespace_is_refused(
    kube: MemoryKube, events: list[tuple[str, str, str]]
) -> None:
    refuser = Reconciler(
        kube=kube,  # type: ignore[arg-type]
        settings=fixed_settings(),
        post_event=lambda body, kind, reason, message: events.append((kind, reason, message)),
        clock=lambda: "2026-01-01T00:00:00Z",
    )
    body = instance({"replicas": 1})
    body["metadata"] = {**body["metadata"], "namespace": "kube-system"}
    kube.objects[(api.KIND, "kube-system", "demo")] = copy.deepcopy(body)
    problems = await refuser.reconcile(copy.deepcopy(body))
    assert [p.reason for p in problems] == [status.NAMESPACE_EXCLUDED]
    assert kube.applied == []
    written = kube.objects[(api.KIND, "kube-system", "demo")]["status"]
    conditions = {c["type"]: c for c in written["conditions"]}
    assert (conditions["Degraded"]["status"], conditions["Degraded"]["reason"]) == (
        "True",
        "NamespaceExcluded",
    )
    assert "namespace kube-system is excluded" in conditions["Degraded"]["message"]
    assert conditions["Progressing"]["status"] == "False"
    assert "endpoint" not in written
    assert events == [("Warning", "NamespaceExcluded", conditions["Degraded"]["message"])]


@pytest.mark.parametrize("appears_after", [3, 30])
async def test_a_missing_reference_is_retried_quietly_with_backoff(
    kube: MemoryKube, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch, appears_after: int
) -> None:
    """An expected state (a PVC not created yet) is no handler failure: converge returns (kopf would log each
    TemporaryError at error level and post it as an Event), and the operator retries on its own backoff,
    capped, until the reference appears, however late (the pods start by themselves then, and the status
    must follow)."""
    registry = kopf.OperatorRegistry()
    handlers.register(registry, reconciler, fixed_settings())
    delays: list[int] = []

    def recorded(retry: int, settings: Any) -> int:
        delays.append(reconcile.retry_delay(retry, settings))
        if len(delays) == appears_after:  # the PVC appears after that many retry delays
            kube.objects[("PersistentVolumeClaim", "ns", "models")] = {"metadata": {"name": "models"}}
        return 0

    monkeypatch.setattr(handlers, "retry_delay", recorded)
    raw: Any = store(kube, instance({"models": {"claimName": "models"}}))
    converge: Any = next(h.fn for h in registry._changing.get_all_handlers() if h.id == "converge")
    await converge(body=kopf.Body(raw), meta=kopf.Body(raw).meta, retry=0)  # no TemporaryError
    for _ in range(2000):
        degraded = {c["type"]: c for c in current(kube)["status"]["conditions"]}["Degraded"]
        if degraded["status"] == "False":
            break
        await asyncio.sleep(0.01)
    assert degraded["status"] == "False"
    assert delays == [min(300, 10 * 2**n) for n in range(appears_after)]
    cleanup: Any = next(h.fn for h in registry._activities.get_all_handlers() if h.id == "stop_refresher")
    await cleanup()


async def test_every_known_instance_is_refreshed_once_per_interval_spread_over_it() -> None:
    from comfyui_operator.scheduling import PeriodicRefresh

    scheduled: list[tuple[str, tuple[str, str]]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    def schedule(namespace: str, name: str) -> None:
        scheduled.append((f"{loop.time() - start:.2f}", (namespace, name)))

    periodic = PeriodicRefresh(schedule, interval_seconds=0.3)
    for name in ("a", "b", "c"):
        periodic.add("ns", name)
    periodic.discard("ns", "b")
    await periodic.sweep()
    assert [key for _, key in scheduled] == [("ns", "a"), ("ns", "c")]
    assert float(scheduled[1][0]) >= 0.14  # half the interval apart, not all at once
