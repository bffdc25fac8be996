"""Webhook signing: byte-compatible with upstream (contract 3.7), verified by `standardwebhooks`."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp import web
from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.egress.settings import EgressSettings
from comfyui_sidecar.egress.urls import parse_url
from comfyui_sidecar.jsonbody import js_compatible
from comfyui_sidecar.webhooks import (
    RetryPolicy,
    WebhookSender,
    encode_body,
    sign,
    signed_headers,
    signing_key,
    webhook_timestamp,
)
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_signature_verifies_with_standardwebhooks_with_and_without_prefix() -> None:
    body = encode_body({"type": "prompt.complete", "id": "abc", "text": "héllo", "n": 1.0})
    import time

    headers = signed_headers(signing_key("whsec_" + SECRET), "abc", body, time.time())
    assert Webhook(SECRET).verify(body, headers)["text"] == "héllo"
    assert (
        signed_headers(signing_key(SECRET), "abc", body, time.time())["webhook-signature"]
        == headers["webhook-signature"]
    )


def test_tampered_body_fails_verification() -> None:
    import time

    body = encode_body({"id": "a"})
    headers = signed_headers(signing_key(SECRET), "a", body, time.time())
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"a", b"b"), headers)


def test_signature_matches_a_known_vector() -> None:
    # HMAC-SHA256 over "<id>.<timestamp>.<body>" with the base64-decoded key, base64 encoded, "v1," prefix
    key = signing_key(SECRET)
    assert sign(key, "msg_1", "1700000000", b'{"a":1}') == "v1,rkwp5YuvdrMkcu0ZhuMsXoTg44mHAr1Q0+FFgFpXsjY="


def test_body_is_compact_like_json_stringify() -> None:
    assert encode_body({"a": 1.0, "b": [2.5, 3.0], "c": "ü"}) == '{"a":1,"b":[2.5,3],"c":"ü"}'.encode()
    assert js_compatible({"x": [1.0, {"y": 2.0}]}) == {"x": [1, {"y": 2}]}


def test_timestamp_is_rounded_half_up() -> None:
    assert webhook_timestamp(1700000000.4) == "1700000000"
    assert webhook_timestamp(1700000000.5) == "1700000001"


def test_lenient_key_decoding_ignores_junk_and_padding() -> None:
    assert signing_key(SECRET.rstrip("=")) == signing_key(SECRET)
    assert signing_key("whsec_" + SECRET) == base64.b64decode(SECRET)
    assert signing_key("") == b""
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff\xfe").decode()
    assert signing_key(urlsafe) == b"\xfb\xff\xfe"


def test_retry_delays_double_and_are_capped() -> None:
    policy = RetryPolicy(attempts=5, backoff_s=1.0, backoff_max_s=3.0, timeout_s=1)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


def test_logged_urls_lose_credentials_and_query() -> None:
    assert parse_url("https://user:pw@host:8443/path?token=x").redacted == "https://host:8443/path?…"


def test_encoded_body_round_trips() -> None:
    payload = {"type": "prompt.failed", "id": "1", "error": "x"}
    assert json.loads(encode_body(payload)) == payload


async def test_failed_delivery_logs_no_secret_from_the_url(caplog: pytest.LogCaptureFixture) -> None:
    """A redirect (never followed) or a bad URL must not put the URL's token or password in the log."""

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(request.rel_url))

    app = web.Application()
    app.router.add_route("*", "/hook", loop)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        egress = Egress(EgressSettings(download_allow_networks=["127.0.0.1/32"]))
        try:
            sender = WebhookSender(egress.webhook, RetryPolicy(2, 0, 0, 5), "c2VjcmV0")
            with caplog.at_level("INFO", logger="comfyui_sidecar.webhooks"):
                assert not await sender.send_legacy(f"http://127.0.0.1:{port}/hook?token=s3cret", {"a": 1})
                assert not await sender.send_legacy("http://user:pw0rd@127.0.0.1:notaport/hook", {"a": 1})
        finally:
            await egress.close()
    finally:
        await runner.cleanup()
    assert "failed after 2 attempts" in caplog.text
    assert "s3cret" not in caplog.text
    assert "pw0rd" not in caplog.text
