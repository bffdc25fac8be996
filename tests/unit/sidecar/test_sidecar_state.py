"""Readiness rules (contract 2.2 plus our additions: websocket up, not draining)."""

from __future__ import annotations

from comfyui_sidecar.lifecycle import State


def test_ready_needs_warm_connected_healthy_and_not_draining() -> None:
    assert State(warm=True, comfy_up=True).ready(0, 100)
    assert not State(warm=False, comfy_up=True).ready(0, 0)
    assert not State(warm=True, comfy_up=False).ready(0, 0)
    assert not State(warm=True, comfy_up=True, draining=True).ready(0, 0)
    assert not State(warm=True, comfy_up=True, healthy=False).ready(0, 0)


def test_max_queue_depth_flips_ready_at_the_limit() -> None:
    state = State(warm=True, comfy_up=True)
    assert state.ready(2, 1)
    assert not state.ready(2, 2)
    assert not state.ready(2, 5)
