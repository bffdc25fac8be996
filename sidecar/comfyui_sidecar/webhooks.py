"""Webhooks: Standard Webhooks signing (pure) and background delivery with bounded retries (contract 3.7).

Every webhook (legacy, v2 success and failure, system) goes out through the egress webhook client: its policy
checks the target when the prompt is accepted (`check_target`) and every connection when sending; redirects
are not followed (a 3xx answer is a failed attempt)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from comfyui_sidecar.egress.client import EgressClient, EgressError
from comfyui_sidecar.egress.policy import EgressRefused
from comfyui_sidecar.egress.urls import InvalidUrl, Url, parse_url
from comfyui_sidecar.jsonbody import encode, encode_small

log = logging.getLogger(__name__)

_B64_CHARS = re.compile(r"[^A-Za-z0-9+/]")


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON like JSON.stringify (see `jsonbody.dumps`)."""
    return encode_small(payload)


def signing_key(secret: str) -> bytes:
    """The HMAC key for a WEBHOOK_SECRET: 'whsec_' stripped, base64 decoded leniently (both alphabets)."""
    text = secret.removeprefix("whsec_").replace("-", "+").replace("_", "/")
    text = _B64_CHARS.sub("", text)
    text = text[: len(text) - len(text) % 4 if len(text) % 4 == 1 else len(text)]
    return base64.b64decode(text + "=" * (-len(text) % 4))


def webhook_timestamp(now_s: float) -> str:
    """Seconds since the epoch, rounded half up (as upstream's Math.round)."""
    return str(math.floor(now_s + 0.5))


def sign(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    content = webhook_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes, webhook_id: str, body: bytes, now_s: float) -> dict[str, str]:
    timestamp = webhook_timestamp(now_s)
    return {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sign(key, webhook_id, timestamp, body),
    }


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int
    backoff_s: float
    backoff_max_s: float
    timeout_s: float

    def delay(self, failed_attempts: int) -> float:
        """Wait after the n-th failure: backoff, doubling, capped."""
        return float(min(self.backoff_max_s, self.backoff_s * (2 ** (failed_attempts - 1))))


class WebhookSender:
    """Sends webhooks from background tasks; `send_*` return at once and never raise."""

    def __init__(
        self,
        client: EgressClient,
        policy: RetryPolicy,
        secret: str,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self._policy = policy
        self._key = signing_key(secret)
        self._tasks: set[asyncio.Task[bool]] = set()
        self._on_result = on_result

    async def check_target(self, url: str) -> Url:
        """Refuse a webhook target before the prompt runs (InvalidUrl or EgressRefused, with a `message`)."""
        return await self._client.check_target(url)

    def send_v2(self, url: str, payload: Mapping[str, Any]) -> asyncio.Task[bool]:
        """Sign and deliver; base64 files in the payload (`jsonbody.Base64List`) are encoded in the task."""
        return self._spawn(self._encode_and_deliver(url, payload, signed=True))

    def send_legacy(self, url: str, payload: Mapping[str, Any]) -> asyncio.Task[bool]:
        return self._spawn(self._encode_and_deliver(url, payload, signed=False))

    async def deliver_v2(self, url: str, payload: Mapping[str, Any]) -> bool:
        """Sign and deliver now (with retries), in the caller's task; never raises for delivery failures."""
        return await self._encode_and_deliver(url, payload, signed=True)

    def track(self, coro: Coroutine[Any, Any, bool]) -> asyncio.Task[bool]:
        """Run `coro` as a background task that `drain` waits for."""
        return self._spawn(coro)

    def _spawn(self, coro: Coroutine[Any, Any, bool]) -> asyncio.Task[bool]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _encode_and_deliver(self, url: str, payload: Mapping[str, Any], *, signed: bool) -> bool:
        body = await encode(payload)
        if signed:
            webhook_id = str(payload.get("id") or uuid.uuid4())
            headers = signed_headers(self._key, webhook_id, body, time.time())
        else:
            headers = {"Content-Type": "application/json"}
        return await self._deliver(url, body, headers)

    async def _deliver(self, url: str, body: bytes, headers: dict[str, str]) -> bool:
        """Same id, timestamp and signature on every attempt; True once a 2xx answer came back."""
        timeout = aiohttp.ClientTimeout(total=self._policy.timeout_s)
        reason = ""
        try:
            target = parse_url(url)
        except InvalidUrl as error:
            return self._failed("<invalid url>", 0, error.message)
        for attempt in range(1, self._policy.attempts + 1):
            try:
                async with self._client.request(
                    "POST", target, data=body, headers=headers, deadline=timeout
                ) as response:  # the answer's body is not read (a receiver could send any amount)
                    if 200 <= response.status < 300:
                        self._report("delivered")
                        return True
                    reason = f"HTTP {response.status}"
            except EgressRefused as error:
                return self._failed(target.redacted, attempt, error.message)  # no retry: it stays refused
            except EgressError as error:
                reason = error.message
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                reason = failure_reason(error)
            if attempt < self._policy.attempts:
                log.info("webhook attempt %d/%d failed (%s)", attempt, self._policy.attempts, reason)
                await asyncio.sleep(self._policy.delay(attempt))
        return self._failed(target.redacted, self._policy.attempts, reason)

    def _failed(self, shown: str, attempts: int, reason: str) -> bool:
        log.error("webhook delivery to %s failed after %d attempts: %s", shown, attempts, reason)
        self._report("failed")
        return False

    def _report(self, outcome: str) -> None:
        if self._on_result is not None:
            self._on_result(outcome)

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for pending deliveries, e.g. at shutdown."""
        pending = set(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    @property
    def pending(self) -> int:
        return len(self._tasks)


def failure_reason(error: BaseException) -> str:
    """Why a delivery attempt failed, for the log: without the URL that some aiohttp errors print (its
    query or user:password may carry secrets)."""
    if isinstance(error, (aiohttp.InvalidURL, aiohttp.ClientResponseError)):
        return type(error).__name__
    return f"{type(error).__name__}: {error}"
