"""Idempotency keys held cluster-wide, without a database: each key is claimed on its two rendezvous "homes".

The homes of a key are the two peers ranked highest by sha256(key hash + peer name) among the current peers
(fewer when there are fewer peers). A claim succeeds only when every home it reaches accepts it, and each
home's check-and-set is atomic, so two submits with one key never both win while the peers agree; after a
single peer joins or leaves, the old and the new pair of homes still share a peer, so a retry is still caught.
A home that does not answer is skipped for the next one in rank (this sidecar always answers). Claims live in
memory for 24 h (at most MAX_CLAIMS per pod, the oldest evicted first); only the key's SHA-256 is stored.
"""

from __future__ import annotations

import collections
import hashlib
import re
import time
from dataclasses import dataclass, field

from aiohttp import web
from comfyui_sidecar.cluster.client import PeerClient, PeerUnreachable
from comfyui_sidecar.cluster.peers import Peers

HOMES = 2
TTL_S = 86400.0
MAX_CLAIMS = 200_000
ROUTE = "/internal/v2/claims/{digest}"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ClaimsUnavailable(Exception):
    """No home of the key could be reached."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ranked(key_digest: str, names: list[str]) -> list[str]:
    """Peer names by rendezvous score for this key, highest first."""
    return sorted(
        names, key=lambda name: hashlib.sha256(f"{key_digest}/{name}".encode()).digest(), reverse=True
    )


@dataclass
class Claim:
    """A key claimed on `homes` (to release it on a definite failure)."""

    digest: str
    homes: list[str] = field(default_factory=list)


class LocalClaims:
    """This peer's share: digest -> expiry, oldest first."""

    def __init__(self, ttl_s: float = TTL_S, max_claims: int = MAX_CLAIMS) -> None:
        self.ttl_s = ttl_s
        self.max_claims = max_claims
        self._held: collections.OrderedDict[str, float] = collections.OrderedDict()

    def take(self, key_digest: str, now: float | None = None) -> bool:
        now = now if now is not None else time.time()
        while self._held and next(iter(self._held.values())) <= now:
            self._held.popitem(last=False)
        expiry = self._held.get(key_digest)
        if expiry is not None and expiry > now:
            return False
        self._held[key_digest] = now + self.ttl_s
        self._held.move_to_end(key_digest)
        while len(self._held) > self.max_claims:
            self._held.popitem(last=False)
        return True

    def give_back(self, key_digest: str) -> None:
        self._held.pop(key_digest, None)

    def __len__(self) -> int:
        return len(self._held)


class Claims:
    def __init__(self, peers: Peers, client: PeerClient, local: LocalClaims | None = None) -> None:
        self.peers = peers
        self.client = client
        self.local = local or LocalClaims()

    async def _at(self, name: str, method: str, key_digest: str) -> bool | None:
        """True/False from home `name`; None when it cannot be reached."""
        if name == self.peers.self_name:
            if method == "PUT":
                return self.local.take(key_digest)
            self.local.give_back(key_digest)
            return True
        url = self.peers.url(name)
        if url is None:
            return None
        try:
            status, _ = await self.client.call(url, method, ROUTE.format(digest=key_digest))
        except PeerUnreachable:
            return None
        if status in (200, 201, 204):
            return True
        if status == 409:
            return False
        return None

    async def claim(self, key: str) -> Claim | None:
        """The claim, or None when the key was already used (anywhere in the cluster)."""
        claim = Claim(digest(key))
        for name in ranked(claim.digest, self.peers.names()):
            if len(claim.homes) == HOMES:
                break
            taken = await self._at(name, "PUT", claim.digest)
            if taken is None:
                continue
            if not taken:
                await self.release(claim)
                return None
            claim.homes.append(name)
        if not claim.homes:
            raise ClaimsUnavailable("no peer could record the idempotency key")
        return claim

    async def release(self, claim: Claim) -> None:
        """Give the key back (the submit definitely failed), best effort."""
        for name in claim.homes:
            await self._at(name, "DELETE", claim.digest)
        claim.homes.clear()

    # ---- the internal route -------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.Response:
        key_digest = request.match_info["digest"]
        if not _DIGEST.match(key_digest):
            return web.Response(status=400, text="not a sha256 digest")
        if request.method == "PUT":
            return web.Response(status=201 if self.local.take(key_digest) else 409)
        self.local.give_back(key_digest)
        return web.Response(status=204)

    def routes(self) -> list[web.RouteDef]:
        return [web.put(ROUTE, self.handle), web.delete(ROUTE, self.handle)]
