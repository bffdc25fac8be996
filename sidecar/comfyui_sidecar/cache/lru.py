"""The LRU index: entries, pins, reservations and the byte budget. Pure bookkeeping, no I/O.

Usage counts every committed entry and every open reservation (in-flight downloads), each rounded up to whole
file system blocks plus room for its metadata file, so the bytes on disk never exceed what was accounted.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field

BLOCK = 4096
META_OVERHEAD = 2 * BLOCK  # the .meta file and the links of one entry


def footprint(size: int) -> int:
    """Bytes an entry of `size` bytes is accounted for."""
    return -(-size // BLOCK) * BLOCK + META_OVERHEAD


@dataclass
class Entry:
    """One cached blob. `url` never carries userinfo."""

    name: str
    url: str
    size: int
    sha256: str
    auth_required: bool
    cached_at: str
    pins: int = 0


@dataclass
class Reservation:
    id: int
    nbytes: int = 0


class NoSpaceError(Exception):
    """A reservation cannot be satisfied. `permanent` means it never can (larger than the budget)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass
class LruIndex:
    budget: int | None
    entries: OrderedDict[str, Entry] = field(default_factory=OrderedDict)
    reservations: dict[int, Reservation] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    # -- queries ------------------------------------------------------------------------------------------

    def used(self) -> int:
        """Accounted bytes: entries plus reservations."""
        return sum(footprint(e.size) for e in self.entries.values()) + sum(
            footprint(r.nbytes) for r in self.reservations.values() if r.nbytes
        )

    def stored_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def find_prefix(self, prefix: str) -> Entry | None:
        """The entry whose blob name is `prefix` plus an extension (prefix = the 32-char URL hash)."""
        for name, entry in self.entries.items():
            if name.startswith(prefix) and (len(name) == len(prefix) or name[len(prefix)] == "."):
                return entry
        return None

    # -- entries -----------------------------------------------------------------------------------------

    def add(self, entry: Entry) -> None:
        self.entries[entry.name] = entry
        self.entries.move_to_end(entry.name)

    def touch(self, name: str) -> None:
        if name in self.entries:
            self.entries.move_to_end(name)

    def pin(self, name: str) -> Entry:
        entry = self.entries[name]
        entry.pins += 1
        self.entries.move_to_end(name)
        return entry

    def unpin(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1
            self.entries.move_to_end(name)

    def remove(self, name: str) -> Entry | None:
        return self.entries.pop(name, None)

    # -- reservations --------------------------------------------------------------------------------------

    def open_reservation(self) -> Reservation:
        res = Reservation(next(self._ids))
        self.reservations[res.id] = res
        return res

    def release(self, res: Reservation) -> None:
        self.reservations.pop(res.id, None)

    def commit(self, res: Reservation, entry: Entry) -> None:
        """Swap a finished download's reservation for its entry (same or smaller footprint)."""
        self.reservations.pop(res.id, None)
        self.add(entry)

    def plan_growth(self, res: Reservation, total: int) -> list[Entry]:
        """Entries to evict so `res` can grow to `total` bytes; raises NoSpaceError when impossible now.

        Eviction takes unpinned entries in least-recently-used order. The caller removes the returned
        entries (`evict`) and then calls `grow`.
        """
        if total <= res.nbytes or self.budget is None:
            return []
        if footprint(total) > self.budget:
            raise NoSpaceError(
                f"file of {total} bytes is larger than the cache budget of {self.budget} bytes",
                permanent=True,
            )
        current = footprint(res.nbytes) if res.nbytes else 0
        excess = self.used() - current + footprint(total) - self.budget
        if excess <= 0:
            return []
        victims: list[Entry] = []
        freed = 0
        for entry in self.entries.values():
            if entry.pins:
                continue
            victims.append(entry)
            freed += footprint(entry.size)
            if freed >= excess:
                return victims
        held = sum(footprint(e.size) for e in self.entries.values() if e.pins)
        others = sum(footprint(r.nbytes) for r in self.reservations.values() if r.nbytes and r.id != res.id)
        raise NoSpaceError(
            f"cache full: {total} bytes needed, budget {self.budget} bytes, {held} bytes pinned by running "
            f"prompts and {others} bytes reserved by other downloads",
            permanent=False,
        )

    def evict(self, victims: list[Entry]) -> None:
        for entry in victims:
            self.entries.pop(entry.name, None)

    def grow(self, res: Reservation, total: int) -> None:
        res.nbytes = max(res.nbytes, total)

    def over_budget(self) -> list[Entry]:
        """Unpinned entries to evict so committed entries fit the budget (used at start)."""
        if self.budget is None:
            return []
        excess = self.used() - self.budget
        victims: list[Entry] = []
        for entry in self.entries.values():
            if excess <= 0:
                break
            if entry.pins:
                continue
            victims.append(entry)
            excess -= footprint(entry.size)
        return victims
