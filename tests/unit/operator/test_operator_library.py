"""ComfyUIModelLibrary without a cluster: builders (golden file, properties), spec rules, status derivation
from sync Job pods, the instance's ModelsReady and pod gate, and the reconcilers against an in-memory Kube."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from typing import Any

import kubernetes_validate
import pytest
from comfyui_operator import api, library_api, library_builders, library_link, library_status, status
from comfyui_operator.library_reconcile import LibraryReconciler
from comfyui_operator.reconcile import Reconciler
from comfyui_sidecar.library.report import ModelReport, SyncReport, encode
from operator_testlib import example_documents, fixed_settings, golden_path, library_objects
from pydantic import ValidationError
from test_operator_reconcile import MemoryKube

LIB = library_builders.LibraryRef("models", "ns", "lib-uid")
SHA = "a" * 64
SETTINGS = fixed_settings()


def lib_spec(**extra: Any) -> library_api.ComfyUIModelLibrarySpec:
    body: dict[str, Any] = {
        "storage": {"size": "10Gi"},
        "models": [
            {
                "url": "https://example.com/a.safetensors",
                "target": "checkpoints/a.safetensors",
                "sha256": SHA,
            },
            {"url": "s3://bucket/b.pt", "target": "upscale_models/b.pt"},
        ],
    }
    body.update(extra)
    return library_api.parse_library_spec(body)


# ---- builders -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("file_name", "doc"), example_documents(library_api.KIND))
def test_library_golden_and_valid_for_kubernetes(file_name: str, doc: dict[str, Any]) -> None:
    objects = library_objects(doc)
    from operator_testlib import dump_all

    assert dump_all(objects) == golden_path(file_name, doc).read_text(), "`make generate` rewrites it"
    for obj in objects:
        kubernetes_validate.validate(obj, "1.34.0", strict=True)


def test_the_sync_job_has_no_api_access_and_reports_through_its_termination_message() -> None:
    spec = lib_spec(credentials={"secretRef": {"name": "creds"}})
    job = library_builders.build_sync_job(LIB, spec, SETTINGS, "d1")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    assert pod["restartPolicy"] == "Never"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["args"][-2:] == ["--report", "/dev/termination-log"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "library")
    assert "readOnly" not in mount  # the sync writes the volume
    assert pod["volumes"][0] == {"name": "library", "persistentVolumeClaim": {"claimName": "models"}}
    secrets = [e for e in container["env"] if "valueFrom" in e]
    assert {e["name"] for e in secrets} == set(library_api.CREDENTIAL_KEYS)
    assert all(
        e["valueFrom"]["secretKeyRef"] == {"name": "creds", "key": e["name"], "optional": True}
        for e in secrets
    )
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "sync", "operator": "In", "values": [2]},
    }
    assert job["spec"]["backoffLimit"] == 4


def test_a_new_manifest_or_image_is_a_new_sync_and_the_manifest_config_map_belongs_to_its_job() -> None:
    base = library_builders.sync_digest(LIB, lib_spec(), SETTINGS)
    assert base == library_builders.sync_digest(LIB, lib_spec(), SETTINGS)
    assert base != library_builders.sync_digest(LIB, lib_spec(prune=True), SETTINGS)
    assert base != library_builders.sync_digest(LIB, lib_spec(sync={"image": "other:1"}), SETTINGS)
    job = library_builders.build_sync_job(LIB, lib_spec(), SETTINGS, base)
    assert job["metadata"]["name"] == f"models-sync-{base}"
    job["metadata"]["uid"] = "job-uid"
    config_map = library_builders.build_manifest_config_map(LIB, lib_spec(), job)
    assert config_map["immutable"] is True
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == "job-uid"
    assert library_builders.manifest(lib_spec()).digest() in {library_builders.manifest(lib_spec()).digest()}
    assert '"target":"checkpoints/a.safetensors"' in config_map["data"]["manifest.json"]


def test_a_created_claim_outlives_the_library_unless_told_otherwise() -> None:
    kept = library_builders.build_claim(LIB, lib_spec())
    assert "ownerReferences" not in kept["metadata"]
    assert kept["spec"]["accessModes"] == ["ReadWriteMany"]
    deleted = library_builders.build_claim(LIB, lib_spec(storage={"size": "1Gi", "reclaimPolicy": "Delete"}))
    assert deleted["metadata"]["ownerReferences"][0]["uid"] == "lib-uid"
    existing = lib_spec(storage={"claimName": "nas"})
    assert library_builders.claim_name(LIB, existing) == "nas"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"storage": {}}, "exactly one of storage.claimName or storage.size"),
        ({"storage": {"claimName": "a", "size": "1Gi"}}, "exactly one of storage.claimName or storage.size"),
        (
            {
                "storage": {"size": "1Gi"},
                "models": [{"url": "https://x/y", "target": "checkpoints/../../etc"}],
            },
            "models.0.target",
        ),
        ({"storage": {"size": "1Gi"}, "models": [{"url": "https://x/y", "target": "/abs/x"}]}, "target"),
        (
            {
                "storage": {"size": "1Gi"},
                "models": [
                    {"url": "https://x/y", "target": "vae/a"},
                    {"url": "https://x/z", "target": "vae/a"},
                ],
            },
            "listed twice",
        ),
        (
            {
                "storage": {"size": "1Gi"},
                "models": [{"url": "https://x/y", "target": "vae/a", "sha256": "X"}],
            },
            "sha256",
        ),
    ],
)
def test_bad_specs_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        library_api.parse_library_spec(spec)


def test_library_names_must_fit_the_job_name() -> None:
    library_api.check_library_name("a" * 40)
    with pytest.raises(ValueError, match="at most 40"):
        library_api.check_library_name("a" * 41)


# ---- status -------------------------------------------------------------------------------------------


def job(name: str = "models-sync-d1", finished: str | None = None, reason: str = "") -> dict[str, Any]:
    conditions = [{"type": finished, "status": "True", "reason": reason, "message": "m"}] if finished else []
    return {"metadata": {"name": name}, "status": {"conditions": conditions}}


def pod(when: str, message: str | None = None, running: bool = False) -> dict[str, Any]:
    state: dict[str, Any] = (
        {"running": {}} if running else {"terminated": {"exitCode": 1, "message": message}}
    )
    return {
        "metadata": {"creationTimestamp": when},
        "status": {
            "phase": "Running" if running else "Failed",
            "containerStatuses": [{"name": "sync", "state": state}],
        },
    }


def report(*models: ModelReport, error: str = "") -> str:
    return encode(SyncReport("d1", list(models), error=error), pinned={0})


def derive(**observed: Any) -> dict[str, Any]:
    values = {"generation": 3, "spec": lib_spec(), "claim": "models", "digest": "d1", **observed}
    return library_status.derive_status(library_status.SyncObserved(**values), observed.get("previous"), "T")


def conds(new: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in new["conditions"]}


def test_status_before_any_pod_ran_is_pending() -> None:
    new = derive(job=job())
    assert [m["phase"] for m in new["models"]] == ["Pending", "Pending"]
    assert conds(new)["Progressing"] == ("True", "Syncing")
    assert conds(new)["Ready"][0] == "False"


def test_a_complete_sync_reports_sizes_and_sha256_with_pinned_ones_filled_in() -> None:
    message = report(ModelReport("Ready", 10, SHA), ModelReport("Ready", 20, "b" * 64, downloaded=True))
    new = derive(job=job(finished="Complete"), pods=[pod("1", message)])
    assert new["models"][0] == {
        "target": "checkpoints/a.safetensors",
        "url": "https://example.com/a.safetensors",
        "phase": "Ready",
        "size": 10,
        "sha256": SHA,
    }
    assert new["models"][1]["sha256"] == "b" * 64
    assert (new["totalModels"], new["readyModels"], new["failedModels"], new["readyBytes"]) == (2, 2, 0, 30)
    assert conds(new) == {
        "Ready": ("True", "AllModelsReady"),
        "Progressing": ("False", "SyncComplete"),
        "Degraded": ("False", "AsExpected"),
    }


def test_a_retry_shows_downloading_with_the_bytes_and_reason_of_the_failed_attempt() -> None:
    first = report(
        ModelReport("Ready", 10, SHA), ModelReport("Failed", 5, message="connection reset", retryable=True)
    )
    new = derive(job=job(), pods=[pod("1", first), pod("2", running=True)])
    assert new["models"][0]["phase"] == "Ready"
    assert new["models"][1] | {} == {
        "target": "upscale_models/b.pt",
        "url": "s3://bucket/b.pt",
        "phase": "Downloading",
        "size": 5,
        "message": "retrying after: connection reset",
    }
    assert conds(new)["Progressing"] == ("True", "Retrying")
    assert conds(new)["Degraded"][0] == "False"  # still trying: not yet a human's problem


def test_a_sync_that_gave_up_is_degraded_naming_the_model() -> None:
    last = report(ModelReport("Ready", 10, SHA), ModelReport("Failed", 0, message="Not Found (HTTP 404)"))
    new = derive(job=job(finished="Failed", reason="PodFailurePolicy"), pods=[pod("1", last)])
    assert new["models"][1]["phase"] == "Failed"
    assert conds(new)["Degraded"] == ("True", "ModelFailed")
    assert "upscale_models/b.pt: Not Found (HTTP 404)" in new["conditions"][2]["message"]
    assert conds(new)["Ready"] == ("False", "ModelFailed")
    assert conds(new)["Progressing"] == ("False", "SyncFailed")


def test_a_crash_without_a_report_shows_the_end_of_the_log() -> None:
    new = derive(
        job=job(finished="Failed", reason="BackoffLimitExceeded"), pods=[pod("1", "Traceback ... boom")]
    )
    assert conds(new)["Degraded"] == ("True", "SyncFailed")
    assert "boom" in new["conditions"][2]["message"]


def test_an_older_sync_still_running_is_waited_for() -> None:
    new = derive(job=None, previous_job_running="models-sync-old")
    assert conds(new)["Progressing"] == ("True", "WaitingForPreviousSync")


def test_invalid_spec_and_missing_claim() -> None:
    invalid = derive(spec=None, problems=[status.Problem(status.INVALID_SPEC, "spec.models: bad")])
    assert conds(invalid)["Degraded"] == ("True", "InvalidSpec")
    missing = derive(job=None, problems=[status.Problem(status.MISSING_REFERENCE, "claim nas not found")])
    assert conds(missing)["Degraded"] == ("True", "MissingReference")


# ---- the instance's side -------------------------------------------------------------------------------


def library_body(ready: bool, claim: str = "models") -> dict[str, Any]:
    return {
        "metadata": {"name": "models"},
        "spec": {"storage": {"size": "1Gi"}},
        "status": {
            "claimName": claim,
            "readyModels": 2 if ready else 1,
            "totalModels": 2,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "Syncing",
                    "message": "1/2",
                }
            ],
        },
    }


def test_pods_wait_for_a_library_that_is_not_ready_unless_they_already_run() -> None:
    link = library_link.LibraryLink("models", library_body(ready=False))
    assert link.hold_pods(None)
    assert link.hold_pods({"spec": {"replicas": 0}})
    assert not link.hold_pods({"spec": {"replicas": 2}})
    assert not library_link.LibraryLink("models", library_body(ready=True)).hold_pods(None)
    cond = link.condition(pods_held=True)
    assert (cond["type"], cond["status"], cond["reason"]) == ("ModelsReady", "False", "LibraryNotReady")
    assert "no pods are started until it is Ready" in cond["message"]
    assert "running pods keep serving" in link.condition(pods_held=False)["message"]
    gone = library_link.LibraryLink("models", None)
    assert gone.problem() is not None
    assert gone.condition(False)["reason"] == "LibraryNotFound"


def test_the_instance_mounts_the_library_claim_read_only() -> None:
    spec = api.parse_spec({"models": {"libraryRef": {"name": "models"}}})
    link = library_link.LibraryLink("models", library_body(ready=True, claim="nas-models"))
    mounted = library_link.mounted_spec(spec, link)
    assert mounted.models is not None
    assert mounted.models.claim_name == "nas-models"


# ---- reconcilers against an in-memory Kube ---------------------------------------------------------------


class ClusterKube(MemoryKube):
    """MemoryKube plus create (uids) and the library's status writes."""

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        created = copy.deepcopy(dict(obj))
        created["metadata"]["uid"] = str(uuid.uuid4())
        self.objects[key] = created
        self.applied.append(created)
        return copy.deepcopy(created)

    async def delete(self, kind: str, namespace: str, name: str, *, propagation: str | None = None) -> bool:
        return await super().delete(kind, namespace, name)

    async def patch_status(
        self, namespace: str, name: str, new_status: Mapping[str, Any], *, kind: str = api.KIND
    ) -> None:
        self.status_writes.append(copy.deepcopy(dict(new_status)))
        self.objects[(kind, namespace, name)]["status"] = copy.deepcopy(dict(new_status))


def library_object(spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": library_api.KIND,
        "metadata": {"name": "models", "namespace": "ns", "uid": "lib-uid", "generation": generation},
        "spec": spec,
    }


SPEC = {"storage": {"size": "1Gi"}, "models": [{"url": "https://e.com/a.pt", "target": "vae/a.pt"}]}


def jobs(kube: ClusterKube) -> list[str]:
    return sorted(name for (kind, _, name) in kube.objects if kind == "Job")


async def test_one_sync_at_a_time_and_a_new_manifest_runs_after_the_old_one() -> None:
    kube = ClusterKube()
    libraries = LibraryReconciler(kube, SETTINGS, lambda *_: None)  # type: ignore[arg-type]
    kube.objects[(library_api.KIND, "ns", "models")] = library_object(SPEC)
    await libraries.reconcile(library_object(SPEC))
    await libraries.reconcile(library_object(SPEC))
    first = jobs(kube)
    assert len(first) == 1
    assert ("PersistentVolumeClaim", "ns", "models") in kube.objects
    assert ("ConfigMap", "ns", first[0]) in kube.objects

    changed = {**SPEC, "prune": True}
    kube.objects[(library_api.KIND, "ns", "models")] = library_object(changed, 2)
    await libraries.reconcile(library_object(changed, 2))
    assert jobs(kube) == first  # the running sync ends first
    assert kube.objects[(library_api.KIND, "ns", "models")]["status"]["conditions"][1]["reason"] == (
        "WaitingForPreviousSync"
    )

    kube.objects[("Job", "ns", first[0])]["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    await libraries.reconcile(library_object(changed, 2))
    assert len(jobs(kube)) == 1
    assert jobs(kube) != first  # the old one deleted, the new one created


async def test_a_claim_of_that_name_that_is_not_the_librarys_is_not_touched() -> None:
    kube = ClusterKube()
    libraries = LibraryReconciler(kube, SETTINGS, lambda *_: None)  # type: ignore[arg-type]
    kube.objects[(library_api.KIND, "ns", "models")] = library_object(SPEC)
    kube.objects[("PersistentVolumeClaim", "ns", "models")] = {
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models"},
    }
    problems = await libraries.reconcile(library_object(SPEC))
    assert [p.reason for p in problems] == ["ClaimConflict"]
    assert jobs(kube) == []


def instance_body() -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "demo", "namespace": "ns", "uid": "i-uid", "generation": 1},
        "spec": {"replicas": 2, "models": {"libraryRef": {"name": "models"}}},
    }


async def test_an_instance_waits_for_its_library_then_starts_and_reports_models_ready() -> None:
    kube = ClusterKube()
    reconciler = Reconciler(kube, SETTINGS, lambda *_: None)  # type: ignore[arg-type]
    kube.objects[(api.KIND, "ns", "demo")] = instance_body()

    problems = await reconciler.reconcile(instance_body())
    assert [p.reason for p in problems] == ["MissingReference"]
    assert ("Deployment", "ns", "demo") not in kube.objects  # nothing to mount: no pods at all
    live = kube.objects[(api.KIND, "ns", "demo")]["status"]
    assert {c["type"]: c["reason"] for c in live["conditions"]}["ModelsReady"] == "LibraryNotFound"

    kube.objects[(library_api.KIND, "ns", "models")] = library_body(ready=False)
    assert await reconciler.reconcile(instance_body()) == []
    deployment = kube.objects[("Deployment", "ns", "demo")]
    assert deployment["spec"]["replicas"] == 0
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
    }
    live = kube.objects[(api.KIND, "ns", "demo")]["status"]
    by_type = {c["type"]: (c["status"], c["reason"]) for c in live["conditions"]}
    assert by_type["ModelsReady"] == ("False", "LibraryNotReady")
    assert by_type["Ready"] == ("False", "WaitingForModels")
    assert by_type["Degraded"] == ("False", "AsExpected")

    kube.objects[(library_api.KIND, "ns", "models")] = library_body(ready=True)
    await reconciler.reconcile(instance_body())
    assert kube.objects[("Deployment", "ns", "demo")]["spec"]["replicas"] == 2
    live = kube.objects[(api.KIND, "ns", "demo")]["status"]
    assert {c["type"]: c["status"] for c in live["conditions"]}["ModelsReady"] == "True"

    kube.objects[(library_api.KIND, "ns", "models")] = library_body(ready=False)  # syncing a new manifest
    await reconciler.reconcile(instance_body())
    assert kube.objects[("Deployment", "ns", "demo")]["spec"]["replicas"] == 2  # running pods are kept

    del kube.objects[(library_api.KIND, "ns", "models")]  # deleted while in use
    applied = len(kube.applied)
    problems = await reconciler.reconcile(instance_body())
    assert [p.reason for p in problems] == ["MissingReference"]
    assert not [o for o in kube.applied[applied:] if o["kind"] == "Deployment"]  # pods left as they are
    live = kube.objects[(api.KIND, "ns", "demo")]["status"]
    assert {c["type"]: c["status"] for c in live["conditions"]}["Degraded"] == "True"
