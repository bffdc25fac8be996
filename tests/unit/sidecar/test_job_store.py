"""The job store fed with ComfyUI's recorded websocket messages (spec/comfyui-transcripts), claims, peers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from comfyui_sidecar.cluster.claims import HOMES, LocalClaims, digest, ranked
from comfyui_sidecar.cluster.peers import Peers
from comfyui_sidecar.job_records import OutputFile, Watcher
from comfyui_sidecar.jobs import JobStore
from transcripts import TRANSCRIPTS

"""The recordings of a real ComfyUI 0.3.64 (copied from spec/comfyui-transcripts)."""


def recording(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((TRANSCRIPTS / name).read_text())
    return data


def store_with(prompt_id: str, workflow: dict[str, Any], origin: str = "v2") -> tuple[JobStore, Any]:
    store = JobStore(retention_s=60, max_jobs=100)
    return store, store.new_record(f"job-{prompt_id}", origin, prompt_id, workflow)


def replay(store: JobStore, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        if message.get("type", "").startswith("__"):
            continue
        store.on_comfy_event(message)


def test_heavy_upscale_runs_with_sixteen_tile_steps() -> None:
    record_data = recording("wf_heavy_upscale.json")
    prompt_id = record_data["prompt_id"]
    workflow = record_data["history"][prompt_id]["prompt"][2]
    store, record = store_with(prompt_id, workflow)
    watcher = store.watch(record)
    steps: list[tuple[int | None, int | None, float]] = []
    for message in record_data["ws"]:
        store.on_comfy_event(message)
        if message["type"] == "progress":
            steps.append((record.progress.step, record.progress.steps, record.progress.value()))
    assert record.status == "running"  # the terminal state is the runner's to record
    assert record.started is not None
    assert [s[:2] for s in steps] == [(i, 16) for i in range(1, 17)]
    values = [s[2] for s in steps]
    assert values == sorted(values)
    assert 0 < values[0] < values[-1] < 1
    assert record.progress.current_class in (None, "SaveImage", "ImageUpscaleWithModel")
    kinds = [kind for kind, _ in watcher.drain()]
    assert kinds.count("status") == 1  # queued -> running
    assert "progress" in kinds


def test_an_execution_error_becomes_the_job_failure_with_node_class_and_traceback() -> None:
    record_data = recording("wf_exec_error_corrupt_model.json")
    prompt_id = record_data["prompt_id"]
    store, record = store_with(prompt_id, record_data["history"][prompt_id]["prompt"][2])
    replay(store, record_data["ws"])
    assert record.error is not None
    assert record.error.code == "node_execution_error"
    assert record.error.class_type == "UpscaleModelLoader"
    assert "SafetensorError" in record.error.message
    assert record.error.traceback


def test_events_of_other_prompts_and_after_the_end_are_ignored() -> None:
    record_data = recording("wf_empty_image_save.json")
    store, record = store_with("someone-else", {"1": {"class_type": "EmptyImage"}})
    replay(store, record_data["ws"])
    assert record.status == "queued"
    store.finish(record, "succeeded")
    store.on_comfy_event({"type": "execution_start", "data": {"prompt_id": "someone-else"}})
    assert record.status == "succeeded"


def test_outputs_are_announced_once_and_before_the_terminal_status() -> None:
    record_data = recording("wf_empty_image_save.json")
    prompt_id = record_data["prompt_id"]
    store, record = store_with(prompt_id, record_data["history"][prompt_id]["prompt"][2])

    def describe(job: Any, node: str, output: Any) -> list[OutputFile]:
        return [
            OutputFile(0, node, item["filename"], "image", "image/png", 1, 0.0) for item in output["images"]
        ]

    store.describe_outputs = describe
    watcher = store.watch(record)
    replay(store, record_data["ws"])
    store.add_outputs(record, describe(record, "2", record_data["history"][prompt_id]["outputs"]["2"]))
    store.finish(record, "succeeded")
    kinds = [kind for kind, _ in watcher.drain()]
    assert kinds.count("output") == len(record.outputs) == 1
    assert kinds.index("output") < len(kinds) - 1
    assert kinds[-1] == "status"
    assert record.progress.value() == 1.0


def test_queue_positions_move_up_as_jobs_start() -> None:
    store = JobStore(retention_s=60, max_jobs=100)
    jobs = [store.new_record(f"j{i}", "v2", f"c{i}", {}) for i in range(3)]
    assert [store.queue_position(j) for j in jobs] == [1, 2, 3]
    watcher = store.watch(jobs[2])
    store.mark_running(jobs[0])
    assert [store.queue_position(j) for j in jobs] == [None, 1, 2]
    assert watcher.drain() == [("status", ("queued", 2))]
    assert store.active_count() == 3


def test_retention_and_shared_output_files() -> None:
    store = JobStore(retention_s=10, max_jobs=2)
    a = store.new_record("a", "v2", "ca", {})
    b = store.new_record("b", "v2", "cb", {})
    same = OutputFile(0, "9", "x.png", "image", "image/png", 1, 0.0)
    store.add_outputs(a, [same])
    store.add_outputs(
        b, [OutputFile(0, "9", "x.png", "image", "image/png", 1, 0.0)]
    )  # a cache hit: same file
    store.finish(a, "succeeded")
    store.finish(b, "succeeded")
    assert store.expire(now=time.time()) == []
    assert [o.name for o in store.expire(now=a.expires + 1)] == ["x.png"]  # both gone: the file may go
    c = store.new_record("c", "v2", "cc", {})
    y = OutputFile(0, "9", "y.png", "image", "image/png", 1, 0.0)
    store.add_outputs(c, [y])
    store.finish(c, "succeeded")
    d = store.new_record("d", "prompt", "cd", {})
    e = store.new_record("e", "prompt", "ce", {})
    store.finish(d, "succeeded")
    assert store.expire() == [y]  # three records, two allowed: the oldest finished one goes
    assert store.get_v2("c") is None
    assert store.get_prompt("d") is d
    assert store.get_prompt("e") is e  # active jobs are never dropped


async def test_wait_idle_returns_when_the_last_job_ends() -> None:
    store = JobStore(retention_s=60, max_jobs=10)
    record = store.new_record("a", "v2", "c", {})
    waiting = asyncio.ensure_future(store.wait_idle(5))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    store.finish(record, "canceled")
    assert await waiting is True
    store.new_record("b", "v2", "d", {})
    assert await store.wait_idle(0.05) is False


def test_a_watcher_coalesces_progress_but_keeps_every_status_and_output() -> None:
    watcher = Watcher()
    for step in range(50):
        watcher.push("progress", step)
    watcher.push("status", ("running", None))
    watcher.push("output", "o1")
    watcher.push("progress", 99)
    assert watcher.drain() == [("status", ("running", None)), ("output", "o1"), ("progress", 99)]


# ---- idempotency claims and peers --------------------------------------------------------------------------
def test_local_claims_are_single_use_until_they_expire_or_are_given_back() -> None:
    claims = LocalClaims(ttl_s=10, max_claims=3)
    assert claims.take("k", now=0)
    assert not claims.take("k", now=5)
    assert claims.take("k", now=11)
    claims.give_back("k")
    assert claims.take("k", now=12)
    for name in ("a", "b", "c"):
        claims.take(name, now=13)
    assert len(claims) == 3


def test_the_two_homes_of_a_key_overlap_after_one_peer_joins_or_leaves() -> None:
    names = [f"10.0.0.{i}" for i in range(1, 7)]
    for n in range(200):
        key = digest(f"key-{n}")
        before = set(ranked(key, names)[:HOMES])
        for changed in ([*names, "10.0.0.99"], [x for x in names if x != names[n % len(names)]]):
            after = set(ranked(key, changed)[:HOMES])
            assert before & after, (key, before, after)


async def test_peers_from_dns_are_named_by_ip_and_include_this_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [("10.0.0.1",), ("10.0.0.2",), ("fd00::3",)]

    async def fake_getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        assert (host, port) == ("cui-peers.ns.svc", 3000)
        return [(0, 0, 0, "", (ip, port)) for (ip,) in answers]

    peers = Peers("10.0.0.1", dns_name="cui-peers.ns.svc", port=3000)
    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", fake_getaddrinfo)
    await peers.refresh()
    assert peers.names() == ["10.0.0.1", "10.0.0.2", "fd00::3"]
    assert peers.others() == {"10.0.0.2": "http://10.0.0.2:3000", "fd00::3": "http://[fd00::3]:3000"}
    assert await peers.find("10.9.9.9") is None  # an id naming an unknown peer: no address to call
    answers.pop()
    await peers.refresh()
    assert "fd00::3" not in peers.names()


async def test_a_draining_pod_keeps_serving_fresh_outputs_for_a_while() -> None:
    from comfyui_sidecar.v2.wiring import linger_for_downloads

    store = JobStore(retention_s=60, max_jobs=10)
    started = time.monotonic()
    await linger_for_downloads(store, started + 5)
    assert time.monotonic() - started < 0.1  # nothing finished: no wait
    record = store.new_record("a", "v2", "c", {})
    store.add_outputs(record, [OutputFile(0, "9", "x.png", "image", "image/png", 1, 0.0)])
    store.finish(record, "succeeded")
    started = time.monotonic()
    await linger_for_downloads(store, started + 0.3)  # bounded by the drain's deadline
    assert 0.25 < time.monotonic() - started < 1.0
