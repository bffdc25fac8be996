"""Which models one ComfyUI holds: an inference from what ComfyUI tells the sidecar, not a reading.

ComfyUI has no API that lists the models it holds. What it does tell, per prompt, on its websocket: the nodes
it serves from its execution cache (`execution_cached`), the nodes it runs (`executing`), and at the end which
ran to completion (`execution_success`, or the `executed` list of `execution_error` /
`execution_interrupted`). A model-loader node (the loader table, `loaders.py`) that ComfyUI ran to completion
or served from its cache means ComfyUI holds that model's output after the prompt: those models are "used"
by the prompt (`activity.ComfyActivity` collects them).

What it keeps across prompts depends on ComfyUI's cache. The default ("classic") cache keeps only the outputs
the latest prompt can reuse, so after a prompt ComfyUI holds exactly that prompt's used models (a prompt
without loaders leaves none). With `--cache-lru N` (or other caches) it keeps more; the sidecar learns that
when ComfyUI serves a loader from its cache that the previous prompt did not use, and from then on keeps the
used models of earlier prompts too, most recent first. Either way at most `limit` names are kept. A lost
connection (ComfyUI may have restarted with an empty cache) forgets everything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence


class LoadedModels:
    """The inferred models of one ComfyUI, `<folder>/<name>` (`placement.model_name`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.retains = False
        """True once ComfyUI served a loader from its cache that the previous prompt did not use: its cache
        keeps more than the latest prompt (e.g. --cache-lru)."""
        self._held: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._previous: frozenset[str] | None = None
        """The used models of the previous prompt; None when unknown (no prompt since the connection)."""

    def names(self) -> list[str]:
        """Most recently used first."""
        return list(reversed(self._held))

    def prompt_finished(self, used: Collection[str], cached: Collection[str]) -> None:
        """A prompt ended on this ComfyUI: `used` = the models of its loaders that ran to completion or were
        served from the cache, `cached` = those served from the cache."""
        if self._previous is not None and set(cached) - self._previous:
            self.retains = True
        if not self.retains:
            self._held.clear()
        for name in sorted(used):
            self._held.pop(name, None)
            self._held[name] = None
        while len(self._held) > self.limit:
            self._held.popitem(last=False)
        self._previous = frozenset(used)

    def reset(self) -> None:
        """The connection to ComfyUI dropped: it may have restarted with an empty cache."""
        self._held.clear()
        self._previous = None

    def expected(self, queued: Sequence[Collection[str]]) -> set[str]:
        """What ComfyUI will hold when the prompts queued on it now (`queued`, their models, in queue order)
        have run: the latest queued prompt's models with the classic cache, all of them besides the held
        ones when it keeps more."""
        if not queued:
            return set(self._held)
        if not self.retains:
            return set(queued[-1])
        return set(self._held).union(*queued)
