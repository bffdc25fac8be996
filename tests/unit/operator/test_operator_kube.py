"""`Kube` over real HTTP on 127.0.0.1: the requests it sends (paths, verbs, content types, query) and how it
reads answers. The server here only records requests and replays canned answers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web
from comfyui_operator import kube as kube_module
from comfyui_operator.kube import FIELD_MANAGER, Kube, KubeError
from kubernetes import client

Recorded = list[dict[str, Any]]


@pytest.fixture
async def server() -> AsyncIterator[tuple[Kube, Recorded, dict[str, tuple[int, Any]]]]:
    recorded: Recorded = []
    answers: dict[str, tuple[int, Any]] = {}

    async def handle(request: web.Request) -> web.Response:
        body = await request.text()
        recorded.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "content_type": request.headers.get("Content-Type"),
                "body": json.loads(body) if body else None,
            }
        )
        answer = answers.get(f"{request.method} {request.path}", (200, {"kind": "Ok"}))
        status, payload = answer(dict(request.query)) if callable(answer) else answer
        return web.json_response(payload, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    kube = Kube(client.ApiClient(configuration))
    try:
        yield kube, recorded, answers
    finally:
        await runner.cleanup()


async def test_apply_is_server_side_apply(server: tuple[Kube, Recorded, dict[str, Any]]) -> None:
    kube, recorded, _ = server
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "demo", "namespace": "ns"}}
    await kube.apply(obj)
    request = recorded[-1]
    assert request["method"] == "PATCH"
    assert request["path"] == "/apis/apps/v1/namespaces/ns/deployments/demo"
    assert request["content_type"] == "application/apply-patch+yaml"
    assert request["query"] == {"fieldManager": FIELD_MANAGER, "force": "true"}
    assert request["body"] == obj


async def test_get_missing_is_none_and_errors_raise(server: tuple[Kube, Recorded, dict[str, Any]]) -> None:
    kube, _, answers = server
    answers["GET /api/v1/namespaces/ns/persistentvolumeclaims/models"] = (404, {"kind": "Status"})
    assert await kube.get("PersistentVolumeClaim", "ns", "models") is None
    answers["GET /api/v1/namespaces/ns/configmaps/cm"] = (403, {"message": "configmaps is forbidden"})
    with pytest.raises(KubeError) as info:
        await kube.get("ConfigMap", "ns", "cm")
    assert info.value.status == 403
    assert "forbidden" in info.value.message


async def test_list_and_status_patch(server: tuple[Kube, Recorded, dict[str, Any]]) -> None:
    kube, recorded, answers = server
    answers["GET /api/v1/namespaces/ns/pods"] = (200, {"items": [{"metadata": {"name": "p"}}]})
    pods = await kube.list("Pod", "ns", label_selector="a=b")
    assert pods == [{"metadata": {"name": "p"}}]
    assert recorded[-1]["query"] == {"limit": "500", "labelSelector": "a=b"}
    await kube.patch_status("ns", "demo", {"replicas": 1})
    request = recorded[-1]
    assert request["path"] == "/apis/comfyui.operator.dev/v1alpha1/namespaces/ns/comfyuiinstances/demo/status"
    assert request["content_type"] == "application/merge-patch+json"
    assert request["body"] == {"status": {"replicas": 1}}


async def test_delete_and_create(server: tuple[Kube, Recorded, dict[str, Any]]) -> None:
    kube, recorded, answers = server
    answers["DELETE /apis/policy/v1/namespaces/ns/poddisruptionbudgets/gone"] = (404, {})
    assert await kube.delete("PodDisruptionBudget", "ns", "gone") is False
    assert await kube.delete("PodDisruptionBudget", "ns", "there") is True
    lease = {"kind": "Lease", "metadata": {"name": "l", "namespace": "ns"}}
    await kube.create(lease)
    assert (recorded[-1]["method"], recorded[-1]["path"]) == (
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
    )
    answers["PUT /apis/coordination.k8s.io/v1/namespaces/ns/leases/l"] = (409, {"message": "conflict"})
    with pytest.raises(KubeError):
        await kube.replace(lease)


async def test_no_connection_is_a_kube_error_with_status_0() -> None:
    """Refused connections (API server down, network cut) must raise KubeError, which the leader elector and
    the reconciler handle, not a raw urllib3 error that kills the Lease renewal task."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
        configuration.retries = 0
        kube = Kube(client.ApiClient(configuration))
        with pytest.raises(KubeError) as info:
            await kube.get("Lease", "ns", "l")
    assert info.value.status == 0


async def test_list_follows_the_continue_token(server: tuple[Kube, Recorded, dict[str, Any]]) -> None:
    """A busy namespace answers in pages of 500: every page must be read, or pods and events go missing."""
    kube, recorded, answers = server

    def pages(query: dict[str, str]) -> tuple[int, Any]:
        page = int(query.get("continue") or 0)
        more = {"continue": str(page + 1)} if page < 2 else {}
        return 200, {"metadata": more, "items": [{"metadata": {"name": f"p{page}"}}]}

    answers["GET /api/v1/namespaces/ns/pods"] = pages
    pods = await kube.list("Pod", "ns", label_selector="a=b")
    assert [pod["metadata"]["name"] for pod in pods] == ["p0", "p1", "p2"]
    assert [request["query"] for request in recorded] == [
        {"limit": "500", "labelSelector": "a=b"},
        {"limit": "500", "labelSelector": "a=b", "continue": "1"},
        {"limit": "500", "labelSelector": "a=b", "continue": "2"},
    ]


async def test_list_reads_a_bounded_number_of_pages(server: tuple[Kube, Recorded, dict[str, Any]]) -> None:
    kube, recorded, answers = server
    endless = (200, {"metadata": {"continue": "again"}, "items": [{"metadata": {"name": "p"}}]})
    answers["GET /api/v1/namespaces/ns/events"] = endless
    events = await kube.list("Event", "ns")
    assert len(recorded) == len(events) == kube_module.MAX_LIST_PAGES


async def test_a_write_into_a_missing_namespace_is_an_error_not_a_success(
    server: tuple[Kube, Recorded, dict[str, Any]],
) -> None:
    """404 means "no such object" for a read or a delete, but for a create, replace or apply it means the
    namespace is not there: the Lease would silently "succeed" without existing (two leaders at once)."""
    kube, _, answers = server
    missing = (404, {"kind": "Status", "code": 404, "message": 'namespaces "comfyui-system" not found'})
    leases = "/apis/coordination.k8s.io/v1/namespaces/comfyui-system/leases"
    answers[f"GET {leases}/comfyui-operator"] = missing
    answers[f"POST {leases}"] = missing
    answers[f"PUT {leases}/comfyui-operator"] = missing
    answers["PATCH /api/v1/namespaces/comfyui-system/configmaps/c"] = missing
    lease = {"kind": "Lease", "metadata": {"name": "comfyui-operator", "namespace": "comfyui-system"}}
    assert await kube.get("Lease", "comfyui-system", "comfyui-operator") is None
    for write in (kube.create(lease), kube.replace(lease)):
        with pytest.raises(KubeError, match='namespaces "comfyui-system" not found') as info:
            await write
        assert info.value.status == 404
    with pytest.raises(KubeError):
        await kube.apply({"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "comfyui-system"}})


async def test_a_kube_with_its_own_executor_never_queues_behind_the_shared_pool(
    server: tuple[Kube, Recorded, dict[str, Any]],
) -> None:
    """200 instances reconciling fill asyncio's shared thread pool with API calls; the Lease renewal queued
    behind them was late by more than the Lease's duration and the leader stopped. Its own executor keeps it
    on time."""
    kube, _, _ = server
    lease_kube = Kube(kube._client, ThreadPoolExecutor(max_workers=1))
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    busy = [loop.run_in_executor(None, gate.wait, 10) for _ in range(64)]  # every shared thread blocked
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(kube.get("Lease", "ns", "l"), timeout=0.5)
        assert await asyncio.wait_for(lease_kube.get("Lease", "ns", "l"), timeout=5) == {"kind": "Ok"}
    finally:
        gate.set()
        await asyncio.gather(*busy)
