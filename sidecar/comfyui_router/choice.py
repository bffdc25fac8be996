"""Which replica gets a job (pure).

Model-aware (`rank`): among the usable replicas (ready, not draining, a ComfyUI up, queue not full), those
that hold some of the job's models and whose queue is at most `affinity_max_queue` per ComfyUI come first:
most models loaded in a ComfyUI, then most models in the cache, then the shortest queue. Every other usable
replica follows: the free ones first (at most SPARE_QUEUE jobs per ComfyUI), where the models the job would
push out (and no other replica holds) are in least demand (`demand`: how many recent jobs used each model);
then the least loaded (queue per ComfyUI). So jobs of rarely used models gather where rarely used models
already are instead of evicting a busy model from the only replica that has it. Remaining ties go to the
replica ranked highest by a hash of the job's model set, so jobs for one set of models keep landing on the
same replica even before any replica reports them loaded.

The whole order is returned: when the first replica refuses (queue full, shutting down, gone) the next is
tried.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from comfyui_sidecar.placement import held_models

Reason = Literal["affinity", "least_loaded", "round_robin", "none"]
SPARE_QUEUE = 1
"""A replica with at most this many jobs per ComfyUI (the running one) counts as free: a job that must load
its models anyway goes to a free one, the one whose models it pushes out are least in demand."""


@dataclass(frozen=True)
class ReplicaView:
    """What routing needs to know about one replica (from its placement report and the router's own
    dispatches since)."""

    name: str
    ready: bool = True
    draining: bool = False
    queue_depth: int = 0
    max_queue_depth: int = 0
    comfyuis_up: int = 1
    loaded: frozenset[str] = field(default_factory=frozenset)
    cached: frozenset[str] = field(default_factory=frozenset)

    @property
    def capacity(self) -> int:
        return max(1, self.comfyuis_up)

    @property
    def full(self) -> bool:
        return self.max_queue_depth > 0 and self.queue_depth >= self.max_queue_depth

    @property
    def serving(self) -> bool:
        """Up and staying: it runs jobs now (possibly with a full queue)."""
        return self.comfyuis_up > 0 and not self.draining

    @property
    def usable(self) -> bool:
        return self.ready and self.serving and not self.full

    @property
    def load(self) -> float:
        return self.queue_depth / self.capacity


@dataclass(frozen=True)
class Decision:
    order: tuple[str, ...]
    """Replica names, the preferred first; empty when no replica can take a job now."""
    reason: Reason


def _tiebreak(key: str, name: str) -> bytes:
    return hashlib.sha256(f"{key}\n{name}".encode()).digest()


def rank(
    replicas: Sequence[ReplicaView],
    models: Collection[str],
    *,
    affinity_max_queue: int,
    demand: Mapping[str, int] | None = None,
) -> Decision:
    """The model-aware order of the usable replicas for a job using `models` ('<folder>/<name>')."""
    demand = demand or {}
    wanted = frozenset(models)
    key = "\n".join(sorted(wanted))
    usable = [replica for replica in replicas if replica.usable]
    if not usable:
        return Decision((), "none")

    def held(replica: ReplicaView) -> tuple[int, int]:
        return len(held_models(wanted, replica.loaded)), len(held_models(wanted, replica.cached))

    near = [
        replica
        for replica in usable
        if held(replica) != (0, 0) and replica.queue_depth <= affinity_max_queue * replica.capacity
    ]
    near.sort(key=lambda r: (-held(r)[0], -held(r)[1], r.load, _tiebreak(key, r.name)))
    chosen = {replica.name for replica in near}
    rest = [replica for replica in usable if replica.name not in chosen]
    holders = collections.Counter(model for replica in usable for model in replica.loaded)

    def evicted(replica: ReplicaView) -> int:
        """The demand for the models this job would push out that no other replica holds."""
        return sum(demand.get(m, 0) for m in replica.loaded - wanted if holders[m] == 1)

    def cost(replica: ReplicaView) -> tuple[bool, int, float, int, int, bytes]:
        """Nearly idle replicas first, least demanded evictions first among them; then the least loaded."""
        far = replica.queue_depth > SPARE_QUEUE * replica.capacity
        loaded, cached = held(replica)
        spoiled = 0 if far else evicted(replica)
        return (far, spoiled, replica.load, -loaded, -cached, _tiebreak(key, replica.name))

    rest.sort(key=cost)
    order = tuple(replica.name for replica in [*near, *rest])
    return Decision(order, "affinity" if near else "least_loaded")


def round_robin(replicas: Sequence[ReplicaView], turn: int) -> Decision:
    """The usable replicas in turn (what a plain Service does), starting at position `turn`."""
    usable = sorted(replica.name for replica in replicas if replica.usable)
    if not usable:
        return Decision((), "none")
    start = turn % len(usable)
    return Decision(tuple(usable[start:] + usable[:start]), "round_robin")


def saturated(replicas: Sequence[ReplicaView]) -> bool:
    """Replicas are serving but every one of them has a full queue: answer 429, do not hold the job."""
    serving = [replica for replica in replicas if replica.serving]
    return bool(serving) and all(replica.full for replica in serving)
