"""The routing choice (pure): where a job goes given what each replica reports."""

from __future__ import annotations

from comfyui_router.choice import ReplicaView, rank, round_robin, saturated

A = "checkpoints/a.safetensors"
B = "checkpoints/b.safetensors"
LORA = "loras/x.safetensors"


def replica(name: str, **fields: object) -> ReplicaView:
    return ReplicaView(name, **fields)  # type: ignore[arg-type]


def test_a_job_goes_to_the_replica_that_has_its_model_loaded() -> None:
    replicas = [
        replica("r1", queue_depth=0),
        replica("r2", queue_depth=1, loaded=frozenset({A})),
        replica("r3", queue_depth=0, loaded=frozenset({B})),
    ]
    decision = rank(replicas, {A}, affinity_max_queue=2)
    assert decision.order[0] == "r2"
    assert decision.reason == "affinity"
    assert set(decision.order) == {"r1", "r2", "r3"}  # the others follow, as fallbacks


def test_loaded_beats_cached_and_more_models_beat_fewer() -> None:
    replicas = [
        replica("cached", cached=frozenset({A, LORA})),
        replica("one", loaded=frozenset({A})),
        replica("both", loaded=frozenset({A, LORA}), queue_depth=2),
    ]
    assert rank(replicas, {A, LORA}, affinity_max_queue=2).order == ("both", "one", "cached")


def test_a_queue_longer_than_the_bound_sends_the_job_to_the_least_loaded() -> None:
    replicas = [
        replica("holder", queue_depth=3, loaded=frozenset({A})),
        replica("busy", queue_depth=2),
        replica("idle", queue_depth=0),
    ]
    decision = rank(replicas, {A}, affinity_max_queue=2)
    assert decision.order == ("idle", "busy", "holder")
    assert decision.reason == "least_loaded"
    # at the bound the holder still gets it
    at_bound = [replica("holder", queue_depth=2, loaded=frozenset({A})), replica("idle")]
    assert rank(at_bound, {A}, affinity_max_queue=2).order[0] == "holder"


def test_the_bound_is_per_comfyui_of_a_multi_gpu_replica() -> None:
    replicas = [
        replica("eight", queue_depth=10, comfyuis_up=8, loaded=frozenset({A})),
        replica("one", queue_depth=1),
    ]
    assert rank(replicas, {A}, affinity_max_queue=2).order[0] == "eight"
    # least loaded compares queue per ComfyUI: 10/8 < 2/1
    others = [replica("eight", queue_depth=10, comfyuis_up=8), replica("one", queue_depth=2)]
    assert rank(others, {B}, affinity_max_queue=2).order[0] == "eight"


def test_replicas_that_cannot_take_a_job_are_left_out() -> None:
    replicas = [
        replica("unready", ready=False, loaded=frozenset({A})),
        replica("draining", draining=True, loaded=frozenset({A})),
        replica("down", comfyuis_up=0, loaded=frozenset({A})),
        replica("full", queue_depth=4, max_queue_depth=4, loaded=frozenset({A})),
        replica("ok", queue_depth=3),
    ]
    assert rank(replicas, {A}, affinity_max_queue=2).order == ("ok",)
    assert rank(replicas[:4], {A}, affinity_max_queue=2).order == ()


def test_equal_replicas_are_broken_by_the_model_set_so_one_model_keeps_one_home() -> None:
    replicas = [replica(f"r{i}") for i in range(4)]
    first = rank(replicas, {A}, affinity_max_queue=2).order[0]
    assert all(rank(replicas, {A}, affinity_max_queue=2).order[0] == first for _ in range(5))
    homes = {
        rank(replicas, {f"checkpoints/m{i}.safetensors"}, affinity_max_queue=2).order[0] for i in range(40)
    }
    assert len(homes) > 1  # different models spread over the replicas


def test_round_robin_turns_over_the_usable_replicas() -> None:
    replicas = [replica("a"), replica("b", ready=False), replica("c")]
    assert [round_robin(replicas, turn).order[0] for turn in range(4)] == ["a", "c", "a", "c"]
    assert round_robin([replica("x", ready=False)], 0).order == ()


def test_saturated_only_when_serving_replicas_are_all_full() -> None:
    full = replica("f", queue_depth=2, max_queue_depth=2, ready=False)
    assert saturated([full])
    assert not saturated([full, replica("free")])
    assert not saturated([])  # nothing runs: hold, do not refuse
    assert not saturated([replica("starting", ready=False, comfyuis_up=0)])


def test_a_job_no_replica_holds_pushes_out_the_least_demanded_model_of_a_free_replica() -> None:
    hot, cold = "checkpoints/hot.safetensors", "checkpoints/cold.safetensors"
    demand = {hot: 40, cold: 3}
    replicas = [
        replica("hot-home", queue_depth=0, loaded=frozenset({hot})),
        replica("cold-home", queue_depth=1, loaded=frozenset({cold})),
        replica("far", queue_depth=5),
    ]
    decision = rank(replicas, {B}, affinity_max_queue=3, demand=demand)
    assert decision.order == ("cold-home", "hot-home", "far")
    assert decision.reason == "least_loaded"
    # a busy model held twice costs nothing to push out of one of its replicas
    twice = [*replicas, replica("hot-too", queue_depth=1, loaded=frozenset({hot}))]
    assert rank(twice, {B}, affinity_max_queue=3, demand=demand).order[0] == "hot-home"
    # behind a queue only its length counts
    busy = [replica("cold-home", queue_depth=3, loaded=frozenset({cold})), replica("idle", queue_depth=2)]
    assert rank(busy, {B}, affinity_max_queue=3, demand=demand).order[0] == "idle"
